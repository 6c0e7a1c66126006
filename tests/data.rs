//! The embedded model's training data and captions. Needs the data installed by scripts/setup_data.sh (CI runs it
//! first); without it these tests fail and say so.
use dma::data::captions::{all_captions, broad_concepts, class_captions, label_names, vocabulary, Captioner, DEFAULT_P_BROAD, NUM_LABELS};
use dma::data::classes::{CLASSES, DIGIT_BASE};
use dma::data::{class_names, data_dir, mnist_digits, Dataset, Rng, Split, NUM_CLASSES};
use dma::models::tokenizer::{words, WordTokenizer};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Kind, Tensor};

fn installed_data() -> PathBuf {
    let dir = data_dir().unwrap();
    let ready = dir.join("fashion-mnist").is_dir() && dir.join("mnist-digits").is_dir();
    assert!(ready, "no training data in {}: run scripts/setup_data.sh first", dir.display());
    dir
}

fn load(split: Split) -> Dataset {
    let start = Instant::now();
    let set = Dataset::load(&installed_data(), split).unwrap();
    println!("{split:?} split: {} images loaded in {:.2} s", set.num_images(), start.elapsed().as_secs_f64());
    set
}

/// Each image as bytes again, to compare images exactly.
fn image_bytes(images: &Tensor) -> Vec<Vec<u8>> {
    let bytes = ((images + 1.0) * 127.5).round().to_kind(Kind::Uint8).contiguous().view([images.size()[0], -1]);
    let flat = Vec::<u8>::try_from(bytes.view([-1])).unwrap();
    flat.chunks_exact(bytes.size()[1] as usize).map(<[u8]>::to_vec).collect()
}

#[test]
fn splits_have_the_published_sizes_and_are_disjoint() {
    let train = load(Split::Train);
    let test = load(Split::Test);
    let (train_counts, test_counts) = (train.class_counts(), test.class_counts());
    // Fashion-MNIST as published: 6,000 training and 1,000 test images per class.
    assert_eq!(train_counts[..DIGIT_BASE], [6000; 10]);
    assert_eq!(test_counts[..DIGIT_BASE], [1000; 10]);
    // The 10,000 npm digits, 3 in every 20 of each digit held out.
    let digits: Vec<usize> = (DIGIT_BASE..NUM_CLASSES).map(|c| train_counts[c] + test_counts[c]).collect();
    assert_eq!(digits.iter().sum::<usize>(), 10000);
    for (d, &total) in digits.iter().enumerate() {
        let held_out = (0..total).filter(|&i| mnist_digits::is_test(i)).count();
        assert_eq!(test_counts[DIGIT_BASE + d], held_out, "digit {d}");
        assert!((800..1200).contains(&total), "digit {d}: {total} images");
    }
    assert_eq!(train.num_images(), 60000 + 8511);
    assert_eq!(test.num_images(), 10000 + 1489);
    for (set, counts) in [(&train, &train_counts), (&test, &test_counts)] {
        let mut from_labels = vec![0; NUM_CLASSES];
        set.labels().iter().for_each(|&c| from_labels[c] += 1);
        assert_eq!(&from_labels, counts);
    }

    let test_images: HashSet<Vec<u8>> = image_bytes(&test.images()).into_iter().collect();
    assert_eq!(test_images.len(), test.num_images(), "the test split holds no image twice");
    let shared = image_bytes(&train.images()).into_iter().filter(|im| test_images.contains(im)).count();
    assert_eq!(shared, 0, "images in both splits");
}

#[test]
fn images_are_padded_to_32_in_unit_range() {
    let test = load(Split::Test);
    let images = test.images();
    assert_eq!(images.size(), [test.num_images() as i64, 1, 32, 32]);
    assert_eq!(images.kind(), Kind::Float);
    assert_eq!(images.min().double_value(&[]), -1.0);
    assert_eq!(images.max().double_value(&[]), 1.0);
    // The 2-pixel border is background (black: -1); so is most of the inside (white-on-black images).
    let inside = images.narrow(2, 2, 28).narrow(3, 2, 28);
    let border_sum = images.sum(Kind::Double).double_value(&[]) - inside.sum(Kind::Double).double_value(&[]);
    let border_pixels = test.num_images() as f64 * (32.0 * 32.0 - 28.0 * 28.0);
    assert_eq!(border_sum, -border_pixels);
    let background = inside.eq(-1.0).to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
    assert!((0.3..0.9).contains(&background), "background share {background}");
}

#[test]
fn batches_are_seeded_and_class_balanced() {
    let train = load(Split::Train);
    let (images, classes) = train.batch(&mut Rng::new(5), 4000);
    assert_eq!(images.size(), [4000, 1, 32, 32]);
    assert_eq!(images.kind(), Kind::Float);
    let mut counts = vec![0; NUM_CLASSES];
    classes.iter().for_each(|&c| counts[c] += 1);
    assert!(counts.iter().all(|&n| (130..270).contains(&n)), "classes drawn uniformly: {counts:?}");

    let (again, same_classes) = train.batch(&mut Rng::new(5), 4000);
    assert_eq!(classes, same_classes);
    assert!(images.equal(&again), "the same seed gives the same batch");
    let (_, other_classes) = train.batch(&mut Rng::new(6), 4000);
    assert_ne!(classes, other_classes);

    // Each image is one of its class's: the mean digit "one" (a thin stroke) is darker than the mean coat.
    let mean_of = |class: usize| {
        let rows: Vec<i64> = (0..classes.len() as i64).filter(|&i| classes[i as usize] == class).collect();
        images.index_select(0, &Tensor::from_slice(&rows)).mean(Kind::Double).double_value(&[])
    };
    assert!(mean_of(DIGIT_BASE + 1) < mean_of(4) - 0.3);
}

#[test]
fn class_names_and_broad_concepts() {
    let names = class_names();
    assert_eq!(names.len(), NUM_CLASSES);
    assert_eq!(names[..3], ["t-shirt", "trouser", "pullover"]);
    assert_eq!((names[9], names[10], names[17], names[19]), ("ankle boot", "zero", "seven", "nine"));

    let concepts = broad_concepts();
    assert!(concepts.len() >= 3);
    let members = |name: &str| {
        let concept = concepts.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no concept {name}"));
        concept.classes.iter().map(|&c| names[c]).collect::<Vec<_>>()
    };
    assert_eq!(members("footwear"), ["sandal", "sneaker", "ankle boot"]);
    assert_eq!(members("a digit"), names[DIGIT_BASE..]);
    let class_words: HashSet<String> =
        CLASSES.iter().flat_map(|c| words(c.name).into_iter().chain(c.numeral.map(str::to_string))).collect();
    for concept in concepts {
        assert!(concept.classes.len() >= 2, "{}: a broad concept spans several classes", concept.name);
        assert_eq!(concept.captions[0], concept.name);
        for caption in concept.captions {
            // Otherwise the concept would be learnt as its member.
            let named: Vec<String> = words(caption).into_iter().filter(|w| class_words.contains(w)).collect();
            assert!(named.is_empty(), "the broad caption {caption:?} names classes: {named:?}");
        }
    }
}

#[test]
fn captions_name_their_class_or_a_concept_holding_it() {
    let captioner = Captioner::new(DEFAULT_P_BROAD).unwrap();
    let mut rng = Rng::new(1);
    for (class, info) in CLASSES.iter().enumerate() {
        let plain = class_captions(class);
        let own = info.numeral.into_iter().chain([info.name]);
        for caption in &plain {
            assert!(own.clone().any(|w| caption.contains(w)), "{caption:?} for {}", info.name);
        }
        let concepts: Vec<_> = broad_concepts().iter().filter(|c| c.classes.contains(&class)).collect();
        let n = 4000;
        let mut broad = 0;
        for _ in 0..n {
            let caption = captioner.caption(class, &mut rng);
            if !plain.contains(&caption) {
                assert!(concepts.iter().any(|c| c.captions.contains(&caption.as_str())), "{caption:?} for {class}");
                broad += 1;
            }
        }
        // Each concept of the class takes its share p_broad.
        let expected = DEFAULT_P_BROAD * concepts.len() as f64;
        let share = broad as f64 / n as f64;
        assert!((share - expected).abs() < 0.03, "class {class}: broad share {share}, expected {expected}");
    }
    assert!(Captioner::new(0.6).is_err(), "even digits are in two concepts: at most 1/2");
    assert!(Captioner::new(-0.1).is_err());

    // Articles follow the sound: "an ankle boot", "an eight", "a one".
    let all = all_captions();
    let expected =
        ["an ankle boot", "a photo of an ankle boot", "an eight", "a one", "the digit seven", "7", "sneaker"];
    for caption in expected {
        assert!(all.iter().any(|c| c == caption), "{caption:?} missing");
    }
    assert!(!all.iter().any(|c| c.contains("a ankle") || c.contains("a eight") || c.contains("an one")));
}

/// The embedded DiT's labels: a class's label is drawn as often as its plain captions are, each concept's as
/// often as its captions; and every caption of the text model names, through the DiT's id2label, the label of
/// what it describes (so the same prompts work on both embedded models).
#[test]
fn labels_follow_the_captions_and_every_caption_names_its_label() {
    let captioner = Captioner::new(DEFAULT_P_BROAD).unwrap();
    let mut rng = Rng::new(2);
    for class in 0..NUM_CLASSES {
        let concepts: Vec<usize> = (0..broad_concepts().len()).filter(|&i| broad_concepts()[i].classes.contains(&class)).collect();
        let n = 4000;
        let mut counts = vec![0usize; NUM_LABELS];
        for _ in 0..n {
            counts[captioner.label(class, &mut rng)] += 1;
        }
        for (label, &count) in counts.iter().enumerate() {
            let expected = match label.checked_sub(NUM_CLASSES) {
                None if label == class => 1.0 - DEFAULT_P_BROAD * concepts.len() as f64,
                Some(concept) if concepts.contains(&concept) => DEFAULT_P_BROAD,
                _ => 0.0,
            };
            let share = count as f64 / n as f64;
            assert!((share - expected).abs() < 0.03, "class {class}, label {label}: share {share}, expected {expected}");
        }
    }
    let names: Vec<Vec<String>> = (0..NUM_LABELS).map(label_names).collect();
    let index = dma::training::embedded::dit_model_index(&names);
    let labels = dma::models::dit::labels::ClassLabels::new(index.get("id2label"), NUM_LABELS as i64).unwrap();
    for class in 0..NUM_CLASSES {
        for caption in class_captions(class) {
            assert_eq!(labels.id_of(&caption).unwrap(), class as i64, "{caption:?}");
        }
    }
    for (i, concept) in broad_concepts().iter().enumerate() {
        for caption in concept.captions {
            assert_eq!(labels.id_of(caption).unwrap(), (NUM_CLASSES + i) as i64, "{caption:?}");
        }
    }
    assert_eq!(labels.id_of("ankle boot").unwrap(), 9);
    assert_eq!(labels.id_of("seven").unwrap(), 17, "a digit's bare name is one of its label's names too");
}

#[test]
fn every_caption_tokenizes_with_the_caption_vocabulary() {
    let vocab = vocabulary();
    let tokenizer = WordTokenizer::from_words(&vocab, 16).unwrap();
    for caption in all_captions() {
        let ids = tokenizer.encode(&caption).unwrap();
        let n_words = words(&caption).len();
        assert!(n_words + 2 <= 16, "{caption:?} does not fit 16 tokens");
        assert_eq!(ids[n_words + 1], tokenizer.eos_id(), "{caption:?}");
    }
    // The vocabulary is exactly the captions' words.
    let used: HashSet<String> = all_captions().iter().flat_map(|c| words(c)).collect();
    assert_eq!(used.len(), vocab.len());
    assert!(vocab.windows(2).all(|w| w[0] < w[1]), "sorted, without repeats");
    for word in ["footwear", "even", "t", "-", "shirt", "ankle", "boot", "7", "seven"] {
        assert!(vocab.iter().any(|v| v == word), "{word} missing from {vocab:?}");
    }
}
