//! The word-level tokenizer of the embedded model: built from a word list, saved in the `tokenizers` format, read
//! back through `Tokenizer::from_folder` as a model folder's tokenizer is.
use dma::models::tokenizer::{Tokenizer, WordTokenizer, WORD_BOS, WORD_EOS, WORD_PAD};
use std::path::Path;

fn vocabulary() -> Vec<String> {
    ["a", "an", "ankle", "boot", "photo", "of", "sneaker", "seven", "7", "t", "-", "shirt", "sneaker"]
        .iter()
        .map(|w| w.to_string())
        .collect()
}

fn built(max_length: usize) -> WordTokenizer {
    WordTokenizer::from_words(&vocabulary(), max_length).unwrap()
}

fn load_word(dir: &Path) -> WordTokenizer {
    match Tokenizer::from_folder(dir).unwrap() {
        Tokenizer::Word(t) => t,
        Tokenizer::Clip(_) => panic!("a WordLevel tokenizer.json loaded as CLIP's BPE"),
    }
}

#[test]
fn ids_are_laid_out_as_clips() {
    let tok = built(8);
    // Sorted words ("-" < "7" < "a" < ...), then pad, start, end: the end token has the largest id.
    let words = ["-", "7", "a", "an", "ankle", "boot", "of", "photo", "seven", "shirt", "sneaker", "t"];
    assert_eq!(tok.vocab_size(), words.len() + 3);
    let (pad, bos, eos) = (12, 13, 14);
    assert_eq!((tok.pad_id(), tok.bos_id(), tok.eos_id()), (pad, bos, eos));
    assert_eq!(tok.max_length(), 8);
    assert_eq!(tok.encode("a sneaker").unwrap(), [bos, 2, 10, eos, pad, pad, pad, pad]);
    assert_eq!(tok.encode("  A  Photo of an ANKLE boot").unwrap(), [bos, 2, 7, 6, 3, 4, 5, eos]);
    assert_eq!(tok.encode("t-shirt 7").unwrap(), [bos, 11, 0, 9, 1, eos, pad, pad]);
    assert_eq!(tok.encode("").unwrap(), [bos, eos, pad, pad, pad, pad, pad, pad]);
    // Special tokens are matched whole in the raw text, as in `tokenizers`.
    assert_eq!(tok.encode(&format!("a{WORD_EOS}7")).unwrap(), [bos, 2, eos, 1, eos, pad, pad, pad]);
}

#[test]
fn truncates_so_the_end_token_fits() {
    let tok = built(8);
    let ids = tok.encode(&["seven"; 20].join(" ")).unwrap();
    assert_eq!(ids, [13, 8, 8, 8, 8, 8, 8, 14]);
}

#[test]
fn unknown_words_are_errors_listing_the_vocabulary() {
    let tok = built(16);
    let err = format!("{:#}", tok.encode("a photo of a cat").err().unwrap());
    assert!(err.contains("`cat`"), "{err}");
    assert!(err.contains(": -, 7, a, an, ankle, boot, of, photo, seven, shirt, sneaker, t "), "{err}");
    assert!(!err.contains(WORD_PAD), "special tokens are not words to suggest: {err}");
    // Punctuation is a word of its own, unknown here.
    let err = format!("{:#}", tok.encode("a sneaker.").err().unwrap());
    assert!(err.contains("`.`"), "{err}");
}

#[test]
fn round_trip_through_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("tokenizer");
    let tok = built(16);
    tok.save(&folder).unwrap();
    assert!(folder.join("tokenizer.json").is_file() && folder.join("tokenizer_config.json").is_file());
    let loaded = load_word(&folder);
    assert_eq!(loaded.vocab_size(), tok.vocab_size());
    assert_eq!(loaded.max_length(), 16);
    assert_eq!((loaded.bos_id(), loaded.eos_id(), loaded.pad_id()), (tok.bos_id(), tok.eos_id(), tok.pad_id()));
    for text in ["a sneaker", "A PHOTO OF AN ANKLE BOOT", "t-shirt", "7", "", &["a"; 30].join(" ")] {
        assert_eq!(loaded.encode(text).unwrap(), tok.encode(text).unwrap(), "{text:?}");
    }
    assert!(loaded.encode("a cat").is_err());

    // Saved again, the files are the same (deterministic output, for committed model folders).
    let again = dir.path().join("again");
    loaded.save(&again).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(std::fs::read(folder.join(file)).unwrap(), std::fs::read(again.join(file)).unwrap(), "{file}");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["bos_token"], WORD_BOS);
    assert_eq!(config["eos_token"], WORD_EOS);
    assert_eq!(config["pad_token"], WORD_PAD);
}

#[test]
fn word_lists_must_hold_single_lowercase_words() {
    for bad in ["Sneaker", "ankle boot", "t-shirt", ""] {
        let words = vec![bad.to_string()];
        let err = format!("{:#}", WordTokenizer::from_words(&words, 16).err().unwrap());
        assert!(err.contains(&format!("`{bad}`")), "{err}");
    }
    assert!(WordTokenizer::from_words(&vocabulary(), 1).is_err(), "no room for the start and end tokens");
}

#[test]
fn from_folder_picks_the_tokenizer_by_model_type() {
    let dir = tempfile::tempdir().unwrap();
    let write = |json: &str| std::fs::write(dir.path().join("tokenizer.json"), json).unwrap();
    write(
        r#"{"model": {"type": "BPE", "vocab": {"a</w>": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}, "merges": []}}"#,
    );
    let Tokenizer::Clip(_) = Tokenizer::from_folder(dir.path()).unwrap() else { panic!("BPE is CLIP's tokenizer") };

    write(r#"{"model": {"type": "Unigram", "vocab": []}}"#);
    let err = format!("{:#}", Tokenizer::from_folder(dir.path()).err().unwrap());
    assert!(err.contains("tokenizer.json: model type `Unigram` is not supported"), "{err}");

    write(r#"{"model": {"type": "WordLevel", "vocab": {"a": 0}}, "pre_tokenizer": {"type": "BertPreTokenizer"}}"#);
    let err = format!("{:#}", Tokenizer::from_folder(dir.path()).err().unwrap());
    assert!(err.contains("tokenizer.json: pre_tokenizer") && err.contains("not supported"), "{err}");

    write(r#"{"model": {"type": "WordLevel", "vocab": {"a": 0}}, "pre_tokenizer": {"type": "Whitespace"}}"#);
    let err = format!("{:#}", Tokenizer::from_folder(dir.path()).err().unwrap());
    assert!(err.contains("tokenizer.json: special token `<|startoftext|>` is not in the vocabulary"), "{err}");
}
