//! Captions for the training images, drawn with a seeded `Rng`: the class by name in plain templates ("a sneaker",
//! "a photo of an ankle boot", "the digit seven", "7") and, now and then, a broad concept spanning several classes
//! ("footwear", "a digit", "an even digit"), so the model learns multimodal prompts whose true modes are known.
//! The empty caption of classifier-free guidance is the trainer's to add.
use super::classes::{Class, CLASSES, NUM_CLASSES};
use super::Rng;
use crate::models::tokenizer::words;
use anyhow::{ensure, Result};
use std::collections::BTreeSet;

/// The probability, per broad concept a class belongs to, that its caption is that concept's.
pub const DEFAULT_P_BROAD: f64 = 0.25;

/// `{a}` is the class's article, `{name}` its name, `{numeral}` a digit's numeral.
const ITEM_TEMPLATES: &[&str] =
    &["{a} {name}", "a photo of {a} {name}", "{name}", "a picture of {a} {name}", "an image of {a} {name}"];
const DIGIT_TEMPLATES: &[&str] = &[
    "the digit {name}",
    "{numeral}",
    "{a} {name}",
    "the number {name}",
    "a handwritten {name}",
    "the digit {numeral}",
    "a handwritten {numeral}",
];

/// A word or phrase whose meaning spans several classes: the ground truth of the modes a clustering should find.
pub struct BroadConcept {
    /// Its plain prompt, e.g. "footwear".
    pub name: &'static str,
    /// Its member class ids (see `super::classes`).
    pub classes: &'static [usize],
    /// Every caption it is given in training, `name` first.
    pub captions: &'static [&'static str],
}

const BROAD_CONCEPTS: [BroadConcept; 3] = [
    BroadConcept {
        name: "footwear",
        classes: &[5, 7, 9], // sandal, sneaker, ankle boot
        captions: &["footwear", "a piece of footwear", "a photo of footwear"],
    },
    BroadConcept {
        name: "a digit",
        classes: &[10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
        captions: &["a digit", "a handwritten digit", "a number"],
    },
    // The third concept. Its five modes are shapes a classifier tells apart reliably, unlike the upper-body garments
    // of "a top" (t-shirt, pullover, shirt, coat: Fashion-MNIST's most confused classes), so mode coverage can be
    // measured; it nests inside "a digit", so a clustering test can also check that odd digits are absent; and its
    // one new word, "even", appears in no class caption.
    BroadConcept {
        name: "an even digit",
        classes: &[10, 12, 14, 16, 18], // zero, two, four, six, eight
        captions: &["an even digit", "a handwritten even digit", "an even number"],
    },
];

/// The broad concepts and their member classes.
pub fn broad_concepts() -> &'static [BroadConcept] {
    &BROAD_CONCEPTS
}

/// Every plain caption of class `class`.
pub fn class_captions(class: usize) -> Vec<String> {
    let Class { name, article, numeral } = &CLASSES[class];
    let templates = if numeral.is_some() { DIGIT_TEMPLATES } else { ITEM_TEMPLATES };
    templates
        .iter()
        .map(|t| t.replace("{a}", article).replace("{name}", name).replace("{numeral}", numeral.unwrap_or_default()))
        .collect()
}

/// Every caption any image can get.
pub fn all_captions() -> Vec<String> {
    let plain = (0..NUM_CLASSES).flat_map(class_captions);
    let broad = BROAD_CONCEPTS.iter().flat_map(|c| c.captions.iter().map(|s| s.to_string()));
    plain.chain(broad).collect()
}

/// Every word any caption contains, as the word-level tokenizer splits and lowercases them, sorted.
pub fn vocabulary() -> Vec<String> {
    let words: BTreeSet<String> = all_captions().iter().flat_map(|c| words(c)).collect();
    words.into_iter().collect()
}

/// Draws captions for class ids.
pub struct Captioner {
    p_broad: f64,
}

impl Captioner {
    /// `p_broad` is the probability, for each broad concept a class belongs to, of a caption of that concept. Per
    /// concept rather than per image, so that every member of a concept gets its captions equally often (an even
    /// digit belongs to "a digit" and to "an even digit", an odd one only to "a digit"): with class-balanced
    /// batches, the concept's modes are then equally weighted. The class's plain captions take the rest.
    pub fn new(p_broad: f64) -> Result<Self> {
        let most = (0..NUM_CLASSES).map(|c| concepts_of(c).count()).max().unwrap_or(0).max(1);
        ensure!(
            (0.0..=1.0 / most as f64).contains(&p_broad),
            "the probability of a broad caption must be in [0, {}] (a class is in up to {most} broad concepts), \
             not {p_broad}",
            1.0 / most as f64
        );
        Ok(Self { p_broad })
    }

    pub fn caption(&self, class: usize, rng: &mut Rng) -> String {
        match self.broad_concept(class, rng) {
            Some(concept) => rng.choose(BROAD_CONCEPTS[concept].captions).to_string(),
            None => rng.choose(&class_captions(class)).clone(),
        }
    }

    /// The label a class-conditional model is trained with for an image of `class`: its class, or, as often as a
    /// caption would be that concept's, a broad concept's label (see `label_names`).
    pub fn label(&self, class: usize, rng: &mut Rng) -> usize {
        match self.broad_concept(class, rng) {
            Some(concept) => NUM_CLASSES + concept,
            None => class,
        }
    }

    /// Which broad concept (by index), if any, stands for an image of `class` this time.
    fn broad_concept(&self, class: usize, rng: &mut Rng) -> Option<usize> {
        let u = rng.uniform();
        // The k-th concept of the class takes [k p, (k+1) p) of the unit interval.
        let members = (0..BROAD_CONCEPTS.len()).filter(|&i| BROAD_CONCEPTS[i].classes.contains(&class));
        members.enumerate().find(|&(k, _)| u < (k + 1) as f64 * self.p_broad).map(|(_, index)| index)
    }
}

/// The labels of a class-conditional model trained on these images: the 20 classes (ids 0-19), then each broad
/// concept (20 "footwear", 21 "a digit", 22 "an even digit").
pub const NUM_LABELS: usize = NUM_CLASSES + BROAD_CONCEPTS.len();

/// A label's names, as a DiT's id2label lists them (comma-separated): a class's name and its plain captions, a
/// broad concept's captions; so the prompts that work on the text-conditioned model name the same things.
pub fn label_names(label: usize) -> Vec<String> {
    match label.checked_sub(NUM_CLASSES) {
        None => {
            let mut names = class_captions(label);
            let name = CLASSES[label].name.to_string();
            if !names.contains(&name) {
                names.insert(0, name);
            }
            names
        }
        Some(concept) => BROAD_CONCEPTS[concept].captions.iter().map(|c| c.to_string()).collect(),
    }
}

fn concepts_of(class: usize) -> impl Iterator<Item = &'static BroadConcept> {
    BROAD_CONCEPTS.iter().filter(move |c| c.classes.contains(&class))
}

/// The classes a caption truly describes: its own class for a plain caption, every member for a broad one.
/// Contrastive training counts all of them as matches, not only the image the caption was drawn for.
pub fn classes_described_by(caption: &str) -> Vec<usize> {
    if let Some(concept) = BROAD_CONCEPTS.iter().find(|c| c.captions.contains(&caption)) {
        return concept.classes.to_vec();
    }
    (0..NUM_CLASSES).filter(|&c| class_captions(c).iter().any(|s| s == caption)).collect()
}
