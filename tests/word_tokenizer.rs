//! The word-level tokenizer of the embedded model: built from a word list, saved in the `tokenizers` format, read
//! back through `Tokenizer::from_folder` as a model folder's tokenizer is; and WordLevel folders that name their own
//! special tokens, against transformers' ids (tests/fixtures/word-tokenizer, made by scripts/make_fixtures.py).
mod common;
use common::{fixture, read_json};
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
    assert!(err.contains("tokenizer.json: no post_processor puts start and end tokens around the text"), "{err}");
}

#[test]
fn folders_naming_their_own_special_tokens_match_transformers() {
    let cases = read_json(&fixture("word-tokenizer/cases.json"));
    let folders = cases["folders"].as_object().unwrap();
    assert_eq!(folders.len(), 4);
    for (name, folder) in folders {
        let tok = load_word(&fixture("word-tokenizer").join(name));
        assert_eq!(tok.max_length() as u64, folder["max_length"].as_u64().unwrap(), "{name}");
        for case in folder["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let got = tok.encode(text);
            match case["ids"].as_array() {
                Some(ids) => {
                    let want: Vec<i64> = ids.iter().map(|v| v.as_i64().unwrap()).collect();
                    assert_eq!(got.unwrap(), want, "{name}: ids differ from transformers' for {text:?}");
                }
                None => assert!(got.is_err(), "{name}: transformers refuses {text:?} (unknown word), dma took it"),
            }
        }
    }
}

#[test]
fn the_template_puts_the_ends_and_the_config_the_padding() {
    // config/ names `<s>`, `</s>`, `<pad>` in tokenizer_config.json; its tokenizer.json's template has [BOS], [EOS].
    let tok = load_word(&fixture("word-tokenizer/config"));
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (1, 2, 13));
    let tok = load_word(&fixture("word-tokenizer/template"));
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (1, 2, 0));
}

/// A copy of a fixture folder, with `edit` applied, loaded: the error it gives.
fn load_error(name: &str, edit: impl FnOnce(&Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("word-tokenizer").join(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    edit(dir.path());
    format!("{:#}", Tokenizer::from_folder(dir.path()).err().expect("the edited folder should be refused"))
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut json = read_json(path);
    edit(&mut json);
    std::fs::write(path, serde_json::to_string(&json).unwrap()).unwrap();
}

#[test]
fn special_tokens_missing_from_the_vocabulary_are_errors_naming_file_and_token() {
    // transformers would add such a token with a new id, which the text encoder has no embedding for.
    let err = load_error("config", |dir| {
        edit_json(&dir.join("tokenizer_config.json"), |c| c["eos_token"] = "<eos>".into())
    });
    assert!(err.contains("tokenizer_config.json: its eos_token `<eos>` is not in the vocabulary"), "{err}");
    let err = load_error("roberta", |dir| {
        edit_json(&dir.join("special_tokens_map.json"), |c| c["pad_token"] = "<p>".into())
    });
    assert!(err.contains("special_tokens_map.json: its pad_token `<p>` is not in the vocabulary"), "{err}");
    let err = load_error("template", |dir| {
        edit_json(&dir.join("tokenizer.json"), |t| t["padding"]["pad_token"] = "<p>".into())
    });
    assert!(err.contains("tokenizer.json: its padding's pad_token `<p>` is not in the vocabulary"), "{err}");
    let err = load_error("roberta", |dir| {
        edit_json(&dir.join("tokenizer.json"), |t| t["post_processor"]["cls"] = serde_json::json!(["<cls>", 1]))
    });
    assert!(err.contains("tokenizer.json: its post_processor's `<cls>` is not in the vocabulary"), "{err}");
    let err = load_error("template", |dir| {
        edit_json(&dir.join("tokenizer.json"), |t| {
            t["post_processor"]["special_tokens"]["[EOS]"]["ids"] = serde_json::json!([5])
        })
    });
    assert!(err.contains("tokenizer.json: its post_processor gives `[EOS]` the id 5, the vocabulary 2"), "{err}");
}

#[test]
fn folders_without_a_pad_token_or_ends_are_refused() {
    // transformers refuses to pad to max_length without a pad token, as Stable Diffusion pipelines do.
    let err = load_error("roberta", |dir| std::fs::remove_file(dir.join("special_tokens_map.json")).unwrap());
    assert!(err.contains("tokenizer.json: no pad token is declared"), "{err}");
    // transformers would encode the text with no start or end token at all.
    let err = load_error("bert", |dir| {
        edit_json(&dir.join("tokenizer.json"), |t| t["post_processor"] = serde_json::Value::Null)
    });
    assert!(err.contains("tokenizer.json: no post_processor puts start and end tokens around the text"), "{err}");
    let err = load_error("template", |dir| {
        edit_json(&dir.join("tokenizer.json"), |t| {
            t["post_processor"]["single"].as_array_mut().unwrap().remove(0);
        });
    });
    assert!(err.contains("tokenizer.json: post_processor template"), "{err}");
}

#[test]
fn special_tokens_map_is_read_only_without_added_tokens_decoder() {
    // As transformers 5: the map is a legacy file, read (and overriding the config) only when tokenizer_config.json
    // has no `added_tokens_decoder`.
    let dir = tempfile::tempdir().unwrap();
    for file in ["tokenizer.json", "special_tokens_map.json"] {
        std::fs::copy(fixture("word-tokenizer/roberta").join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(dir.path().join("special_tokens_map.json"), r#"{"pad_token": "<pad>"}"#).unwrap();
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(&config, r#"{"pad_token": "[PAD]"}"#).unwrap();
    assert_eq!(load_word(dir.path()).pad_id(), 13, "special_tokens_map.json's <pad>");
    std::fs::write(&config, r#"{"pad_token": "[PAD]", "added_tokens_decoder": {}}"#).unwrap();
    assert_eq!(load_word(dir.path()).pad_id(), 0, "tokenizer_config.json's [PAD]");
}
