//! CLIP's byte-level BPE tokenizer, giving the ids of transformers' (fast) `CLIPTokenizer`.
//!
//! The steps follow the `tokenizers` pipeline that `CLIPTokenizer` builds, in its order:
//! 1. special tokens (`<|startoftext|>`, `<|endoftext|>`, the pad token...) are cut out of the raw text;
//! 2. the rest is cleaned: runs of whitespace become one space, then lowercase. The NFC normalisation that
//!    transformers applies first is skipped (no Unicode tables here): text with decomposed accents (e + U+0301)
//!    tokenizes differently from its composed form. (The ftfy/html clean-up of the old slow tokenizer is not part
//!    of transformers' tokenizer any more);
//! 3. tokens added later (Textual Inversion) are cut out of the cleaned text;
//! 4. CLIP's regex splits words, numbers (one digit each) and punctuation runs (GPT-2's regex then splits again);
//!    each piece is mapped byte by byte to printable characters and merged by BPE, with `</w>` on its last symbol.
//!
//! The merges work on token ids: every merge result is itself in the vocabulary, as `tokenizers` requires.
//!
//! `WordTokenizer` reads a `tokenizers` WordLevel model instead: a closed vocabulary of lowercased words, as the
//! embedded model uses (it knows only the words of its training captions), with ids laid out as CLIP's. `Tokenizer`
//! picks one of the two from a folder's files.
//!
//! Each finds its special tokens as the transformers class it stands for does. CLIPTokenizer builds its start and
//! end tokens from the names tokenizer_config.json / special_tokens_map.json give (CLIP's where they give none).
//! PreTrainedTokenizerFast, which loads a WordLevel tokenizer.json, keeps that file's post-processor for the start
//! and end tokens, and pads with the pad token the config files name, else the one of tokenizer.json's padding.
use crate::files::read_json;
use anyhow::{bail, Context, Result};
use regex::Regex;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

mod clip_bpe;
mod word_level;
mod wordpiece;

use clip_bpe::clean;
pub use clip_bpe::ClipTokenizer;
pub use wordpiece::WordPieceTokenizer;
pub use word_level::{words, WordTokenizer, WORD_BOS, WORD_EOS, WORD_PAD};

/// Used when a tokenizer folder gives no length (CLIP's context length).
const DEFAULT_MAX_LENGTH: usize = 77;

/// A token matched whole in the text instead of going through BPE.
struct AddedToken {
    content: String,
    id: i64,
    /// Matched in the cleaned text (tokens added by users) rather than the raw text (special tokens).
    normalized: bool,
    /// The form searched for: `content`, cleaned like the text when `normalized` (as `tokenizers` does).
    matched: String,
}

impl AddedToken {
    fn new(content: String, id: i64, normalized: bool) -> Self {
        let matched = if normalized { clean(&content) } else { content.clone() };
        Self { content, id, normalized, matched }
    }
}

/// Special token names as tokenizer configs give them: a string or an object with `content`.
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn read_vocab(v: &Value, source: &str) -> Result<HashMap<String, i64>> {
    let map = v.as_object().with_context(|| format!("{source}: the vocabulary is not a JSON object"))?;
    map.iter()
        .map(|(token, id)| {
            let id = id.as_i64().with_context(|| format!("{source}: token `{token}` has a non-integer id {id}"))?;
            Ok((token.clone(), id))
        })
        .collect()
}

/// Longest-first alternation, so that at one position the longest token wins as in `tokenizers`.
fn alternation<'a>(tokens: impl Iterator<Item = &'a str>) -> Option<Regex> {
    let mut tokens: Vec<&str> = tokens.collect();
    if tokens.is_empty() {
        return None;
    }
    tokens.sort_by_key(|t| std::cmp::Reverse(t.len()));
    let pattern = tokens.iter().map(|t| regex::escape(t)).collect::<Vec<_>>().join("|");
    Some(Regex::new(&pattern).expect("escaped literals form a valid regex"))
}

/// Cuts `text` at the matches of `split`, in order: (slice, whether it is a match).
fn split_on<'t>(text: &'t str, split: Option<&Regex>) -> Vec<(&'t str, bool)> {
    let mut out = Vec::new();
    let mut start = 0;
    for m in split.map(|r| r.find_iter(text)).into_iter().flatten() {
        out.push((&text[start..m.start()], false));
        out.push((m.as_str(), true));
        start = m.end();
    }
    out.push((&text[start..], false));
    out
}

/// A special token that a tokenizer folder's files name.
struct Declared {
    /// Its role: `bos_token`, `eos_token`, `unk_token` or `pad_token`.
    key: &'static str,
    content: String,
    /// Where it is named ("<file>: its pad_token"), for errors.
    origin: String,
}

/// The special tokens tokenizer_config.json (`config`) and special_tokens_map.json name, as transformers 5 reads
/// them: the map's names replace the config's, but only where the config has no `added_tokens_decoder`
/// (transformers reads the map, a legacy file, only then).
fn declared_specials(dir: &Path, config: Option<&Value>) -> Result<Vec<Declared>> {
    let map_path = dir.join("special_tokens_map.json");
    let legacy = config.is_none_or(|c| c.get("added_tokens_decoder").is_none());
    let map = if legacy && map_path.exists() { Some(read_json::<Value>(&map_path)?) } else { None };
    let mut found: Vec<Declared> = Vec::new();
    for (json, path) in [(config, dir.join("tokenizer_config.json")), (map.as_ref(), map_path)] {
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let Some(content) = json.and_then(|j| j.get(key)).and_then(token_content) {
                found.retain(|d| d.key != key);
                found.push(Declared { key, content, origin: format!("{}: its {key}", path.display()) });
            }
        }
    }
    Ok(found)
}

/// The content of the declared special token `key`, if any.
fn declared<'a>(declared: &'a [Declared], key: &str) -> Option<&'a str> {
    declared.iter().find(|d| d.key == key).map(|d| d.content.as_str())
}

/// tokenizer_config.json's `model_max_length`. Where no length was set transformers writes an enormous float, read
/// as none.
fn model_max_length(config: Option<&Value>) -> Option<usize> {
    config.and_then(|c| c.get("model_max_length")).and_then(Value::as_u64).map(|n| n as usize)
}

fn added_entry(t: &Value, id: Option<i64>, source: &str) -> Result<AddedToken> {
    let content = token_content(t).with_context(|| format!("{source}: added token without content: {t}"))?;
    let id = id.with_context(|| format!("{source}: added token `{content}` has no integer id"))?;
    let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
    let normalized = t.get("normalized").and_then(Value::as_bool).unwrap_or(!special);
    Ok(AddedToken::new(content, id, normalized))
}

/// The tokenizer a model folder ships: word-level where its tokenizer.json has a WordLevel model (the embedded
/// model), else CLIP's BPE (Stable Diffusion).
#[allow(clippy::large_enum_variant)] // One per loaded model: boxing the CLIP variant would buy nothing.
pub enum Tokenizer {
    Clip(ClipTokenizer),
    Word(WordTokenizer),
}

impl Tokenizer {
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if path.is_file() {
            let json: Value = read_json(&path)?;
            let source = path.display().to_string();
            match json.pointer("/model/type").and_then(Value::as_str) {
                Some("WordLevel") => return Ok(Self::Word(WordTokenizer::from_json(dir, &json, &source)?)),
                Some("BPE") | None => {}
                Some(other) => bail!("{source}: model type `{other}` is not supported (BPE as CLIP's, or WordLevel)"),
            }
        }
        Ok(Self::Clip(ClipTokenizer::from_folder(dir)?))
    }

    /// Adds a new token matched whole in prompts (Textual Inversion's placeholder) and returns its id, the next
    /// free one. A token the vocabulary already has is refused: its meaning would silently change.
    pub fn add_new_token(&mut self, token: &str) -> Result<i64> {
        let existing = match self {
            Self::Clip(t) => t.token_id(token),
            Self::Word(t) => t.token_id(token),
        };
        if existing.is_some() {
            bail!("the token `{token}` is already in the tokenizer's vocabulary; a Textual Inversion placeholder must be a new token");
        }
        Ok(match self {
            Self::Clip(t) => t.add_token(token),
            Self::Word(t) => t.add_token(token),
        })
    }

    /// Number of ids in use, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Clip(t) => t.vocab_size(),
            Self::Word(t) => t.vocab_size(),
        }
    }

    /// The length `encode` pads and truncates to.
    pub fn max_length(&self) -> usize {
        match self {
            Self::Clip(t) => t.max_length(),
            Self::Word(t) => t.max_length(),
        }
    }

    /// The tokens of `text` that `encode` drops for want of room (as transformers truncates), if any: (the text's
    /// length in tokens, the room there is).
    pub fn truncation(&self, text: &str) -> Result<Option<(usize, usize)>> {
        let with_start = match self {
            Self::Clip(t) => t.untruncated(text),
            Self::Word(t) => t.untruncated(text)?,
        };
        let (length, room) = (with_start.len() - 1, self.max_length() - 2);
        Ok((length > room).then_some((length, room)))
    }

    /// `max_length` ids for `text`; an error only for a word a word-level vocabulary lacks.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        match self {
            Self::Clip(t) => Ok(t.encode(text)),
            Self::Word(t) => t.encode(text),
        }
    }
}
