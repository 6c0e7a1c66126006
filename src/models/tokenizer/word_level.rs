use super::{
    added_entry, alternation, declared, declared_specials, model_max_length, read_vocab, split_on, Declared,
    DEFAULT_MAX_LENGTH,
};
use crate::files::{read_json, write_json};
use anyhow::{bail, ensure, Context, Result};
use regex::Regex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

/// `tokenizers`' `Whitespace` pre-tokenizer: runs of word characters, or runs of other non-space characters
/// ("t-shirt" is "t", "-", "shirt").
static WORD_PIECES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\w+|[^\w\s]+").expect("the Whitespace pattern is valid"));

/// The special tokens `WordTokenizer::from_words` adds: CLIP's names, and a pad token of its own.
pub const WORD_BOS: &str = "<|startoftext|>";
pub const WORD_EOS: &str = "<|endoftext|>";
pub const WORD_PAD: &str = "<|pad|>";
/// Named as the unknown token because the format needs one, but kept out of the vocabulary: `tokenizers` then fails
/// on an unknown word as `encode` does, instead of giving a token the model never learnt.
const WORD_UNK: &str = "<|unk|>";

/// `tokenizers`' `Lowercase` normalizer: char by char, as it does.
fn lowercase(text: &str) -> String {
    text.chars().flat_map(char::to_lowercase).collect()
}

/// The words of `text` as a lowercasing word-level tokenizer sees them: what its vocabulary must hold to encode it.
pub fn words(text: &str) -> Vec<String> {
    WORD_PIECES.find_iter(&lowercase(text)).map(|m| m.as_str().to_string()).collect()
}

/// The ids of the start and end tokens `tokenizers` puts around the text: tokenizer.json's `post_processor`, which
/// transformers' PreTrainedTokenizerFast keeps as it is (tokenizer_config.json's bos_token and eos_token rename the
/// tokenizer's attributes but do not change the ids). Supported: one special token on each side, as a CLIP text
/// encoder expects (TemplateProcessing `[BOS] $A [EOS]`, RobertaProcessing, BertProcessing). The tokens must be in
/// the vocabulary (`token_id`) with the ids the post-processor gives them.
fn text_ends(json: &Value, token_id: impl Fn(&str) -> Option<i64>, source: &str) -> Result<(i64, i64)> {
    let post = json.get("post_processor").filter(|p| !p.is_null()).with_context(|| {
        format!(
            "{source}: no post_processor puts start and end tokens around the text, as the text encoder expects \
             (transformers would encode the text alone)"
        )
    })?;
    let ends = match post.get("type").and_then(Value::as_str) {
        Some("TemplateProcessing") => {
            let single = post.get("single").unwrap_or(&Value::Null);
            let special = |piece: &Value| -> Option<(String, i64)> {
                let name = piece.pointer("/SpecialToken/id")?.as_str()?;
                match post.get("special_tokens")?.get(name)?.get("ids")?.as_array()?.as_slice() {
                    [id] => Some((name.to_string(), id.as_i64()?)),
                    _ => None,
                }
            };
            let ends = match single.as_array().map(Vec::as_slice) {
                Some([first, text, last]) if text.pointer("/Sequence/id") == Some(&Value::from("A")) => {
                    special(first).zip(special(last))
                }
                _ => None,
            };
            ends.with_context(|| {
                format!(
                    "{source}: post_processor template {single} is not supported: it must be one special token of \
                     one id, the text ($A), one special token (as `[BOS] $A [EOS]`)"
                )
            })?
        }
        Some(kind @ ("RobertaProcessing" | "BertProcessing")) => {
            let token = |key: &str| {
                let pair = match post.get(key).and_then(Value::as_array).map(Vec::as_slice) {
                    Some([name, id]) => name.as_str().map(str::to_string).zip(id.as_i64()),
                    _ => None,
                };
                let found = post.get(key).unwrap_or(&Value::Null);
                pair.with_context(|| format!("{source}: {kind}'s `{key}` is not a [token, id] pair: {found}"))
            };
            (token("cls")?, token("sep")?)
        }
        other => bail!(
            "{source}: post_processor {} is not supported (TemplateProcessing, RobertaProcessing or BertProcessing)",
            other.unwrap_or("without a type")
        ),
    };
    let (start, end) = ends;
    for (token, id) in [&start, &end] {
        let vocab_id = token_id(token)
            .with_context(|| format!("{source}: its post_processor's `{token}` is not in the vocabulary"))?;
        ensure!(vocab_id == *id, "{source}: its post_processor gives `{token}` the id {id}, the vocabulary {vocab_id}");
    }
    Ok((start.1, end.1))
}

/// A `tokenizers` WordLevel model: each word of the text (see `words`) is one id; a word outside the vocabulary is
/// an error. Ids are laid out as CLIP's: start token, words, end token, padding.
pub struct WordTokenizer {
    vocab: HashMap<String, i64>,
    /// The added (special) tokens, matched whole in the raw text before normalising, as `tokenizers` does.
    added: HashMap<String, i64>,
    added_split: Option<Regex>,
    lowercase: bool,
    bos: i64,
    eos: i64,
    pad: i64,
    max_length: usize,
    /// Where the vocabulary came from, for errors.
    source: String,
}

impl WordTokenizer {
    /// A tokenizer over `words` (each one word as `words()` gives it; repeats are ignored). The words take ids 0..
    /// in sorted order, then come `<|pad|>`, `<|startoftext|>` and `<|endoftext|>`: the end token last as in CLIP,
    /// whose old configs (`eos_token_id` 2) find a sequence's end at its largest id.
    pub fn from_words(words: &[String], max_length: usize) -> Result<Self> {
        let mut sorted: Vec<&str> = words.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        for word in &sorted {
            ensure!(
                self::words(word) == [*word],
                "`{word}` is not one lowercase word as the word-level tokenizer splits text (see `words`)"
            );
        }
        let specials = [WORD_PAD, WORD_BOS, WORD_EOS];
        let vocab: HashMap<String, i64> =
            sorted.into_iter().chain(specials).enumerate().map(|(id, t)| (t.to_string(), id as i64)).collect();
        let added = specials.iter().map(|t| (t.to_string(), vocab[*t])).collect();
        let (ends, pad) = ((vocab[WORD_BOS], vocab[WORD_EOS]), vocab[WORD_PAD]);
        Self::build(vocab, added, true, ends, pad, max_length, "the given word list")
    }

    /// A folder with a WordLevel tokenizer.json, read as transformers' PreTrainedTokenizerFast reads it (see
    /// `from_json`). Supported: a `Lowercase` normalizer or none, the `Whitespace` pre-tokenizer, added tokens matched
    /// in the raw text, a post-processor with one special token on each side of the text (as `save` writes); anything
    /// else is an error rather than ids that differ from transformers'.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        Self::from_json(dir, &read_json(&path)?, &path.display().to_string())
    }

    /// `from_folder` with tokenizer.json already read.
    pub(super) fn from_json(dir: &Path, json: &Value, source: &str) -> Result<Self> {
        let model = json.get("model").with_context(|| format!("{source}: no `model` section"))?;
        let model_type = model.get("type").and_then(Value::as_str);
        ensure!(model_type == Some("WordLevel"), "{source}: the model type is {model_type:?}, not WordLevel");
        let vocab = read_vocab(model.get("vocab").unwrap_or(&Value::Null), source)?;
        let lowercase = match json.get("normalizer") {
            None | Some(Value::Null) => false,
            Some(n) if n.get("type").and_then(Value::as_str) == Some("Lowercase") => true,
            Some(n) => bail!("{source}: normalizer {n} is not supported (only Lowercase)"),
        };
        let pre_tokenizer = json.get("pre_tokenizer").unwrap_or(&Value::Null);
        ensure!(
            pre_tokenizer.get("type").and_then(Value::as_str) == Some("Whitespace"),
            "{source}: pre_tokenizer {pre_tokenizer} is not supported (only Whitespace)"
        );
        let mut added = HashMap::new();
        for t in json.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
            let token = added_entry(t, t.get("id").and_then(Value::as_i64), source)?;
            ensure!(
                !token.normalized,
                "{source}: added token `{}` is matched in normalised text, which is not supported",
                token.content
            );
            added.insert(token.content, token.id);
        }
        let token_id = |token: &str| added.get(token).or_else(|| vocab.get(token)).copied();
        let ends = text_ends(json, token_id, source)?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() { Some(read_json::<Value>(&config_path)?) } else { None };
        let mut specials = declared_specials(dir, config.as_ref())?;
        // Where the config files name no pad token, transformers takes tokenizer.json's padding's.
        if let (None, Some(pad)) = (declared(&specials, "pad_token"), json.pointer("/padding/pad_token")) {
            let content = pad.as_str().with_context(|| format!("{source}: padding's pad_token {pad} is not a string"))?;
            let origin = format!("{source}: its padding's pad_token");
            specials.push(Declared { key: "pad_token", content: content.to_string(), origin });
        }
        // transformers makes every declared special token an added token, matched whole in the raw text. One the
        // vocabulary lacks it would add with a new id, which the text encoder has no embedding for.
        for special in &specials {
            let id = added.get(&special.content).or_else(|| vocab.get(&special.content)).copied().with_context(|| {
                format!(
                    "{} `{}` is not in the vocabulary of {source} (transformers would add it with a new id, which \
                     the text encoder has no embedding for)",
                    special.origin, special.content
                )
            })?;
            added.insert(special.content.clone(), id);
        }
        let pad = declared(&specials, "pad_token").map(|name| added[name]).with_context(|| {
            format!(
                "{source}: no pad token is declared (no pad_token in tokenizer_config.json or special_tokens_map.json, \
                 no padding in tokenizer.json), and prompts are padded to the text encoder's length; transformers \
                 refuses to pad such a tokenizer too. Name one, e.g. \"pad_token\": \"[PAD]\" in tokenizer_config.json"
            )
        })?;
        // Without a config's model_max_length transformers leaves the length unset (Stable Diffusion pipelines then
        // fail); the length the file itself truncates or pads to is the one it was made for.
        let file_length = json.pointer("/truncation/max_length").or_else(|| json.pointer("/padding/strategy/Fixed"));
        let max_length = model_max_length(config.as_ref())
            .or_else(|| file_length.and_then(Value::as_u64).map(|n| n as usize))
            .unwrap_or(DEFAULT_MAX_LENGTH);
        Self::build(vocab, added, lowercase, ends, pad, max_length, source)
    }

    fn build(
        vocab: HashMap<String, i64>,
        added: HashMap<String, i64>,
        lowercase: bool,
        (bos, eos): (i64, i64),
        pad: i64,
        max_length: usize,
        source: &str,
    ) -> Result<Self> {
        ensure!(max_length >= 2, "{source}: model_max_length {max_length} leaves no room for the start and end tokens");
        Ok(Self {
            bos,
            eos,
            pad,
            added_split: alternation(added.keys().map(String::as_str)),
            vocab,
            added,
            lowercase,
            max_length,
            source: source.to_string(),
        })
    }

    /// The start token, the words' ids (truncated so the end token fits), the end token, then padding: always
    /// `max_length()` ids. A word outside the vocabulary is an error that lists the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let mut ids = self.untruncated(text)?;
        ids.truncate(self.max_length - 1);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        Ok(ids)
    }

    /// The start token and all of the text's tokens, however many.
    pub fn untruncated(&self, text: &str) -> Result<Vec<i64>> {
        let mut ids = vec![self.bos];
        for (part, is_added) in split_on(text, self.added_split.as_ref()) {
            if is_added {
                ids.push(self.added[part]);
                continue;
            }
            let part = if self.lowercase { lowercase(part) } else { part.to_string() };
            for word in WORD_PIECES.find_iter(&part) {
                let id = self.vocab.get(word.as_str()).with_context(|| {
                    format!(
                        "the prompt {text:?} has the word `{}`, which this model does not know; it knows only: {} \
                         (the vocabulary of {})",
                        word.as_str(),
                        self.known_words().join(", "),
                        self.source
                    )
                })?;
                ids.push(*id);
            }
        }
        Ok(ids)
    }

    /// The id of a word or added token.
    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.added.get(token).or_else(|| self.vocab.get(token)).copied()
    }

    /// Adds a token matched whole in the raw text (as Textual Inversion's placeholder), with the next free id;
    /// a token that exists keeps its id.
    pub fn add_token(&mut self, token: &str) -> i64 {
        if let Some(id) = self.token_id(token) {
            return id;
        }
        let id = self.vocab_size() as i64;
        self.added.insert(token.to_string(), id);
        self.added_split = alternation(self.added.keys().map(String::as_str));
        id
    }

    /// The vocabulary less the special tokens, sorted.
    fn known_words(&self) -> Vec<&str> {
        let mut words: Vec<&str> =
            self.vocab.keys().filter(|t| !self.added.contains_key(*t)).map(String::as_str).collect();
        words.sort_unstable();
        words
    }

    /// Number of ids in use (one more than the largest): the text encoder's embedding table's row count.
    pub fn vocab_size(&self) -> usize {
        let ids = self.vocab.values().chain(self.added.values());
        ids.max().map_or(0, |&max| max as usize + 1)
    }

    /// The length `encode` pads to.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn bos_id(&self) -> i64 {
        self.bos
    }

    pub fn eos_id(&self) -> i64 {
        self.eos
    }

    pub fn pad_id(&self) -> i64 {
        self.pad
    }

    /// Writes tokenizer.json (the `tokenizers` format, with the padding, truncation and start/end tokens that give
    /// `encode`'s ids) and tokenizer_config.json (for transformers' PreTrainedTokenizerFast) into `dir`, each file
    /// atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let name = |id: i64| {
            let token = self.added.iter().chain(&self.vocab).find(|(_, &i)| i == id).map(|(t, _)| t.as_str());
            token.expect("special ids come from the vocabulary")
        };
        let (bos, eos, pad) = (name(self.bos), name(self.eos), name(self.pad));
        let special = |token: &str, type_id: u32| json!({"SpecialToken": {"id": token, "type_id": type_id}});
        let sequence = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
        let mut added: Vec<(&String, &i64)> = self.added.iter().collect();
        added.sort_by_key(|&(_, id)| *id);
        let added: Vec<Value> = added
            .into_iter()
            .map(|(content, id)| {
                json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                       "normalized": false, "special": true})
            })
            .collect();
        let tokenizer = json!({
            "version": "1.0",
            "truncation": {"direction": "Right", "max_length": self.max_length, "strategy": "LongestFirst", "stride": 0},
            "padding": {"strategy": {"Fixed": self.max_length}, "direction": "Right", "pad_to_multiple_of": null,
                        "pad_id": self.pad, "pad_type_id": 0, "pad_token": pad},
            "added_tokens": added,
            "normalizer": if self.lowercase { json!({"type": "Lowercase"}) } else { Value::Null },
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [special(bos, 0), sequence("A", 0), special(eos, 0)],
                "pair": [special(bos, 0), sequence("A", 0), special(eos, 0), sequence("B", 1), special(eos, 1)],
                "special_tokens": {
                    bos: {"id": bos, "ids": [self.bos], "tokens": [bos]},
                    eos: {"id": eos, "ids": [self.eos], "tokens": [eos]},
                },
            },
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": self.vocab, "unk_token": WORD_UNK},
        });
        let config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": self.max_length,
            "bos_token": bos,
            "eos_token": eos,
            "pad_token": pad,
            "clean_up_tokenization_spaces": false,
        });
        write_json(&dir.join("tokenizer.json"), &tokenizer)?;
        write_json(&dir.join("tokenizer_config.json"), &config)
    }
}
