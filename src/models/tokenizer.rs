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
use unicode_normalization::UnicodeNormalization;
use crate::files::{read_json, write_json};
use anyhow::{bail, ensure, Context, Result};
use regex::Regex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::LazyLock;

/// OpenAI's merge list, which CLIP's vocabulary is built from; used when a checkpoint ships no tokenizer.
const OPENAI_BPE_GZ: &[u8] = include_bytes!("../../assets/clip/bpe_simple_vocab_16e6.txt.gz");

const PIECE_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// GPT-2's split, which transformers' byte-level step applies again to each piece (less its whitespace
/// alternatives: pieces hold none). It only changes the special-token names that reach BPE as text
/// ("<|ENDOFTEXT|>" lowercased becomes "<|", "endoftext", "|>").
const BYTE_LEVEL_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";

/// Used when tokenizer_config.json gives no `model_max_length` (CLIP's context length).
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

pub struct ClipTokenizer {
    vocab: HashMap<String, i64>,
    /// (left id, right id) -> (rank, id of the merged token).
    merges: HashMap<(i64, i64), (usize, i64)>,
    added: Vec<AddedToken>,
    /// Alternations over the added tokens, longest first so the longest match wins at a position.
    special_split: Option<Regex>,
    normalized_split: Option<Regex>,
    pieces: Regex,
    byte_level_pieces: Regex,
    byte_chars: [char; 256],
    bos: i64,
    eos: i64,
    pad: i64,
    /// Symbols outside the vocabulary become this token (tiny test vocabularies lack most bytes).
    unk: i64,
    max_length: usize,
}

/// The `tokenizers` normalizer of CLIPTokenizer: NFC, runs of whitespace become one space, then lowercase
/// char by char (not `str::to_lowercase`, whose final-sigma rule `tokenizers` does not apply).
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.nfc() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            in_space = false;
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map to themselves, the rest
/// to U+0100 onwards in byte order.
fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut out = ['\0'; 256];
    let mut next = 256;
    for b in 0..256u32 {
        let code = if printable(b) {
            b
        } else {
            let code = next;
            next += 1;
            code
        };
        out[b as usize] = char::from_u32(code).expect("codes below 0x200 are valid chars");
    }
    out
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

/// merges.txt: a `#version` line, then one "left right" pair per line.
fn parse_merges_txt(text: &str, source: &str) -> Result<Vec<(String, String)>> {
    let mut merges = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || (n == 0 && line.starts_with("#version")) {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) => merges.push((a.to_string(), b.to_string())),
            _ => bail!("{source}: line {} is not a merge of two symbols: {line:?}", n + 1),
        }
    }
    Ok(merges)
}

/// tokenizer.json's `model.merges`: "left right" strings (older files) or ["left", "right"] pairs.
fn parse_merges_json(v: &Value, source: &str) -> Result<Vec<(String, String)>> {
    let list = v.as_array().with_context(|| format!("{source}: `model.merges` is not a list"))?;
    list.iter()
        .enumerate()
        .map(|(n, m)| {
            let pair = match m {
                Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(a) if a.len() == 2 => {
                    a[0].as_str().zip(a[1].as_str()).map(|(l, r)| (l.to_string(), r.to_string()))
                }
                _ => None,
            };
            pair.with_context(|| format!("{source}: merge {n} is not a pair of symbols: {m}"))
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

/// Where the special tokens' names come from, with CLIPTokenizer's defaults.
struct SpecialNames {
    bos: String,
    eos: String,
    unk: String,
    pad: String,
}

impl SpecialNames {
    fn clip_defaults() -> Self {
        let eot = "<|endoftext|>".to_string();
        Self { bos: "<|startoftext|>".into(), eos: eot.clone(), unk: eot.clone(), pad: eot }
    }
}

/// The special tokens' names: CLIPTokenizer's defaults, overridden by tokenizer_config.json (`config`), itself
/// overridden by special_tokens_map.json, as in transformers.
fn special_names(dir: &Path, config: Option<&Value>) -> Result<SpecialNames> {
    let map_path = dir.join("special_tokens_map.json");
    let map = if map_path.exists() { Some(read_json::<Value>(&map_path)?) } else { None };
    let mut names = SpecialNames::clip_defaults();
    for cfg in [config, map.as_ref()].into_iter().flatten() {
        for (key, slot) in [
            ("bos_token", &mut names.bos),
            ("eos_token", &mut names.eos),
            ("unk_token", &mut names.unk),
            ("pad_token", &mut names.pad),
        ] {
            if let Some(content) = cfg.get(key).and_then(token_content) {
                *slot = content;
            }
        }
    }
    Ok(names)
}

/// tokenizer_config.json's `model_max_length`. Where no length was set transformers writes an enormous float;
/// CLIP's context length is the right default.
fn max_length(config: Option<&Value>) -> usize {
    config.and_then(|c| c.get("model_max_length")).and_then(Value::as_u64).map_or(DEFAULT_MAX_LENGTH, |n| n as usize)
}

impl ClipTokenizer {
    /// CLIP's own vocabulary (49408 tokens) from OpenAI's merge list, padding with `<|endoftext|>` as SD 1.x does;
    /// for checkpoints that ship no tokenizer.
    pub fn openai_default() -> Result<Self> {
        Self::openai(SpecialNames::clip_defaults())
    }

    /// As `openai_default`, padding with `pad` (SD 2.x: "!", id 0), which is then also cut out of prompts whole.
    pub fn openai_default_with_pad(pad: &str) -> Result<Self> {
        Self::openai(SpecialNames { pad: pad.into(), ..SpecialNames::clip_defaults() })
    }

    fn openai(names: SpecialNames) -> Result<Self> {
        let source = "the embedded assets/clip/bpe_simple_vocab_16e6.txt.gz";
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(OPENAI_BPE_GZ)
            .read_to_string(&mut text)
            .with_context(|| format!("cannot decompress {source}"))?;
        // As CLIP's SimpleTokenizer: skip the header line and keep the merges that fit a 49408-token vocabulary
        // (256 bytes, 256 bytes with `</w>`, the merges, 2 special tokens).
        let lines: Vec<&str> = text.split('\n').collect();
        let n_merges = 49152 - 256 - 2;
        ensure!(lines.len() > n_merges, "{source} holds {} lines, fewer than CLIP's {n_merges} merges", lines.len());
        let merges = parse_merges_txt(&lines[1..=n_merges].join("\n"), source)?;
        // The byte symbols get ids in the order of their characters.
        let mut symbols: Vec<char> = byte_chars().to_vec();
        symbols.sort();
        let mut tokens: Vec<String> = symbols.iter().map(|c| c.to_string()).collect();
        tokens.extend(symbols.iter().map(|c| format!("{c}</w>")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.extend(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
        let vocab = tokens.into_iter().enumerate().map(|(id, t)| (t, id as i64)).collect();
        Self::build(vocab, &merges, Vec::new(), names, DEFAULT_MAX_LENGTH, source)
    }

    /// A tokenizer folder as transformers saves it: `tokenizer.json` (preferred when present, as in transformers)
    /// or `vocab.json` + `merges.txt`, with `tokenizer_config.json` / `special_tokens_map.json` for the special
    /// tokens and `model_max_length`.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() { Some(read_json::<Value>(&config_path)?) } else { None };
        let tokenizer_json = dir.join("tokenizer.json");
        let mut added = Vec::new();
        let (vocab, merges, source) = if tokenizer_json.exists() {
            let source = tokenizer_json.display().to_string();
            let json = read_json::<Value>(&tokenizer_json)?;
            let model = json.get("model").with_context(|| format!("{source}: no `model` section"))?;
            let vocab = read_vocab(model.get("vocab").unwrap_or(&Value::Null), &source)?;
            let merges = parse_merges_json(model.get("merges").unwrap_or(&Value::Null), &source)?;
            for t in json.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
                added.push(added_entry(t, t.get("id").and_then(Value::as_i64), &source)?);
            }
            (vocab, merges, source)
        } else {
            let vocab_path = dir.join("vocab.json");
            let merges_path = dir.join("merges.txt");
            let source = vocab_path.display().to_string();
            let vocab = read_vocab(&read_json::<Value>(&vocab_path)?, &source)?;
            let merges_text = std::fs::read_to_string(&merges_path)
                .with_context(|| format!("cannot read {}", merges_path.display()))?;
            let merges = parse_merges_txt(&merges_text, &merges_path.display().to_string())?;
            // Next to vocab.json, transformers records added tokens in tokenizer_config.json, keyed by id.
            let decoder = config.as_ref().and_then(|c| c.get("added_tokens_decoder")).and_then(Value::as_object);
            for (id, t) in decoder.into_iter().flatten() {
                added.push(added_entry(t, id.parse().ok(), &config_path.display().to_string())?);
            }
            (vocab, merges, source)
        };

        let names = special_names(dir, config.as_ref())?;
        Self::build(vocab, &merges, added, names, max_length(config.as_ref()), &source)
    }

    fn build(
        vocab: HashMap<String, i64>,
        merges: &[(String, String)],
        mut added: Vec<AddedToken>,
        names: SpecialNames,
        max_length: usize,
        source: &str,
    ) -> Result<Self> {
        ensure!(max_length >= 2, "{source}: model_max_length {max_length} leaves no room for the start and end tokens");
        let id_of = |t: &str| vocab.get(t).copied();
        let mut merge_map = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let (Some(left), Some(right), Some(merged)) = (id_of(a), id_of(b), id_of(&format!("{a}{b}"))) else {
                bail!("{source}: merge {rank} (`{a} {b}`) uses or makes a token that is not in the vocabulary");
            };
            // A pair listed twice merges at its first (lowest) rank.
            merge_map.entry((left, right)).or_insert((rank, merged));
        }
        // Special tokens are cut from the raw text even when they are ordinary vocabulary entries, as transformers
        // does: with SD 2's pad token `!`, "hi!" ends in the pad id 0, not `!</w>`.
        for name in [&names.bos, &names.eos, &names.unk, &names.pad] {
            if !added.iter().any(|t| &t.content == name) {
                let id = id_of(name)
                    .with_context(|| format!("{source}: special token `{name}` is not in the vocabulary"))?;
                added.push(AddedToken::new(name.clone(), id, false));
            }
        }
        let id_of_added = |name: &str| added.iter().find(|t| t.content == name).map(|t| t.id).expect("added above");
        let mut tokenizer = Self {
            bos: id_of_added(&names.bos),
            eos: id_of_added(&names.eos),
            unk: id_of_added(&names.unk),
            pad: id_of_added(&names.pad),
            vocab,
            merges: merge_map,
            added,
            special_split: None,
            normalized_split: None,
            pieces: Regex::new(PIECE_PATTERN).expect("CLIP's pattern is valid"),
            byte_level_pieces: Regex::new(BYTE_LEVEL_PATTERN).expect("GPT-2's pattern is valid"),
            byte_chars: byte_chars(),
            max_length,
        };
        tokenizer.rebuild_splits();
        Ok(tokenizer)
    }

    fn rebuild_splits(&mut self) {
        let matched = |normalized: bool| {
            self.added.iter().filter(move |t| t.normalized == normalized).map(|t| t.matched.as_str())
        };
        self.special_split = alternation(matched(false));
        self.normalized_split = alternation(matched(true));
    }

    /// Adds a token matched whole in the cleaned text, as Textual Inversion needs, and returns its id. A token that
    /// already exists keeps its id (as transformers' `add_tokens`), so callers wanting a fresh embedding row check
    /// `token_id` first. The text encoder's embedding table must then have `vocab_size()` rows.
    pub fn add_token(&mut self, token: &str) -> i64 {
        if let Some(id) = self.token_id(token) {
            if !self.added.iter().any(|t| t.content == token) {
                // A vocabulary entry added as a token is still matched whole from now on, as in `tokenizers`.
                self.added.push(AddedToken::new(token.to_string(), id, true));
                self.rebuild_splits();
            }
            return id;
        }
        let id = self.vocab_size() as i64;
        self.added.push(AddedToken::new(token.to_string(), id, true));
        self.rebuild_splits();
        id
    }

    pub fn token_id(&self, token: &str) -> Option<i64> {
        self.added.iter().find(|t| t.content == token).map(|t| t.id).or_else(|| self.vocab.get(token).copied())
    }

    /// Number of ids in use (one more than the largest), added tokens included: the embedding table's row count.
    pub fn vocab_size(&self) -> usize {
        let ids = self.vocab.values().chain(self.added.iter().map(|t| &t.id));
        ids.max().map_or(0, |&max| max as usize + 1)
    }

    /// The length `encode` pads to (77 for SD).
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `<|startoftext|>`, the text's tokens (truncated so the end token fits), `<|endoftext|>`, then padding:
    /// always `max_length()` ids, as `tokenizer(text, padding="max_length", truncation=True)`.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let added_id = |matched: &str, normalized: bool| {
            let token = self.added.iter().find(|t| t.normalized == normalized && t.matched == matched);
            token.expect("split patterns are built from the added tokens").id
        };
        let mut ids = vec![self.bos];
        for (raw, is_special) in split_on(text, self.special_split.as_ref()) {
            if is_special {
                ids.push(added_id(raw, false));
                continue;
            }
            let cleaned = clean(raw);
            for (part, is_added) in split_on(&cleaned, self.normalized_split.as_ref()) {
                if is_added {
                    ids.push(added_id(part, true));
                } else {
                    for piece in self.pieces.find_iter(part) {
                        for piece in self.byte_level_pieces.find_iter(piece.as_str()) {
                            self.bpe(piece.as_str(), &mut ids);
                        }
                    }
                }
            }
        }
        ids.truncate(self.max_length - 1);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }

    /// Byte-level BPE of one piece: merge the adjacent pair of lowest rank, at every occurrence from the left, until
    /// no pair has a merge.
    fn bpe(&self, piece: &str, out: &mut Vec<i64>) {
        let chars: Vec<char> = piece.bytes().map(|b| self.byte_chars[b as usize]).collect();
        let mut symbols: Vec<i64> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let symbol = if i + 1 == chars.len() { format!("{c}</w>") } else { c.to_string() };
                self.vocab.get(&symbol).copied().unwrap_or(self.unk)
            })
            .collect();
        while let Some((_, pair, merged_id)) = symbols
            .windows(2)
            .filter_map(|w| self.merges.get(&(w[0], w[1])).map(|&(rank, merged)| (rank, (w[0], w[1]), merged)))
            .min()
        {
            let mut next = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len() && (symbols[i], symbols[i + 1]) == pair {
                    next.push(merged_id);
                    i += 2;
                } else {
                    next.push(symbols[i]);
                    i += 1;
                }
            }
            symbols = next;
        }
        out.extend(symbols);
    }
}

fn added_entry(t: &Value, id: Option<i64>, source: &str) -> Result<AddedToken> {
    let content = token_content(t).with_context(|| format!("{source}: added token without content: {t}"))?;
    let id = id.with_context(|| format!("{source}: added token `{content}` has no integer id"))?;
    let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
    let normalized = t.get("normalized").and_then(Value::as_bool).unwrap_or(!special);
    Ok(AddedToken::new(content, id, normalized))
}

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
        let names = SpecialNames { bos: WORD_BOS.into(), eos: WORD_EOS.into(), unk: WORD_UNK.into(), pad: WORD_PAD.into() };
        Self::build(vocab, added, true, &names, max_length, "the given word list")
    }

    /// A folder with a WordLevel tokenizer.json, and tokenizer_config.json / special_tokens_map.json for the special
    /// tokens and `model_max_length` as for CLIP. Supported: what `save` writes (a `Lowercase` normalizer or none,
    /// the `Whitespace` pre-tokenizer, added tokens matched in the raw text); anything else is an error rather than
    /// ids that differ from `tokenizers`'.
    pub fn from_folder(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        Self::from_json(dir, &read_json(&path)?, &path.display().to_string())
    }

    /// `from_folder` with tokenizer.json already read.
    fn from_json(dir: &Path, json: &Value, source: &str) -> Result<Self> {
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
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() { Some(read_json::<Value>(&config_path)?) } else { None };
        let names = special_names(dir, config.as_ref())?;
        Self::build(vocab, added, lowercase, &names, max_length(config.as_ref()), source)
    }

    fn build(
        vocab: HashMap<String, i64>,
        added: HashMap<String, i64>,
        lowercase: bool,
        names: &SpecialNames,
        max_length: usize,
        source: &str,
    ) -> Result<Self> {
        ensure!(max_length >= 2, "{source}: model_max_length {max_length} leaves no room for the start and end tokens");
        let id = |name: &str| {
            let id = added.get(name).or_else(|| vocab.get(name)).copied();
            id.with_context(|| format!("{source}: special token `{name}` is not in the vocabulary"))
        };
        Ok(Self {
            bos: id(&names.bos)?,
            eos: id(&names.eos)?,
            pad: id(&names.pad)?,
            added_split: alternation(added.keys().map(String::as_str)),
            vocab,
            added,
            lowercase,
            max_length,
            source: source.to_string(),
        })
    }

    /// `<|startoftext|>`, the words' ids (truncated so the end token fits), `<|endoftext|>`, then padding: always
    /// `max_length()` ids. A word outside the vocabulary is an error that lists the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
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
        ids.truncate(self.max_length - 1);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        Ok(ids)
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

    /// `max_length` ids for `text`; an error only for a word a word-level vocabulary lacks.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        match self {
            Self::Clip(t) => Ok(t.encode(text)),
            Self::Word(t) => t.encode(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ids up to and including the end token.
    fn head(tok: &ClipTokenizer, text: &str) -> Vec<i64> {
        let ids = tok.encode(text);
        let end = ids.iter().position(|&i| i == 49407).expect("an end token");
        ids[..=end].to_vec()
    }

    // Expected ids from transformers 5.23's CLIPTokenizer on the same vocabulary.
    #[test]
    fn openai_vocabulary_matches_transformers() {
        let tok = ClipTokenizer::openai_default().unwrap();
        assert_eq!(tok.vocab_size(), 49408);
        assert_eq!(tok.max_length(), 77);
        assert_eq!(head(&tok, "a photo of a cat"), [49406, 320, 1125, 539, 320, 2368, 49407]);
        assert_eq!(head(&tok, "hello!"), [49406, 3306, 256, 49407]);
        assert_eq!(head(&tok, "Hello <|endoftext|>world"), [49406, 3306, 49407]);
        assert_eq!(tok.encode("Hello <|endoftext|>world")[..5], [49406, 3306, 49407, 1002, 49407]);
        // Special tokens are matched in the raw text only; lowercased, this is ordinary text.
        assert_eq!(head(&tok, "<|ENDOFTEXT|>"), [49406, 27, 347, 40786, 4160, 91, 285, 49407]);
        assert_eq!(head(&tok, "don't  STOP\tnow 123"), [49406, 847, 713, 1691, 692, 272, 273, 274, 49407]);
        assert_eq!(head(&tok, "café"), [49406, 15304, 49407]);
    }

    #[test]
    fn pads_and_truncates_to_max_length() {
        let tok = ClipTokenizer::openai_default().unwrap();
        let ids = tok.encode("a photo");
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[..4], [49406, 320, 1125, 49407]);
        assert!(ids[4..].iter().all(|&i| i == 49407));
        let ids = tok.encode(&["dog"; 100].join(" "));
        assert_eq!(ids.len(), 77);
        assert_eq!((ids[0], ids[1], ids[75], ids[76]), (49406, 1929, 1929, 49407));
    }

    #[test]
    fn added_tokens_are_matched_whole_in_cleaned_text() {
        let mut tok = ClipTokenizer::openai_default().unwrap();
        assert_eq!(tok.add_token("<cat-toy>"), 49408);
        assert_eq!(tok.add_token("<cat-toy>"), 49408);
        assert_eq!(tok.vocab_size(), 49409);
        assert_eq!(tok.token_id("<cat-toy>"), Some(49408));
        assert_eq!(head(&tok, "a <cat-toy> on a table"), [49406, 320, 49408, 525, 320, 2175, 49407]);
        assert_eq!(head(&tok, "A <CAT-TOY>s"), [49406, 320, 49408, 338, 49407]);
        assert_eq!(head(&tok, "a<cat-toy>b"), [49406, 320, 49408, 321, 49407]);
        // An existing entry keeps its id but is now matched whole, as in transformers.
        assert_eq!(tok.add_token("cat"), 1481);
        assert_eq!(tok.vocab_size(), 49409);
        assert_eq!(head(&tok, "a cat"), [49406, 320, 1481, 49407]);
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    const TINY_VOCAB: &str =
        r#"{"!": 0, "h": 1, "i</w>": 2, "hi</w>": 3, "!</w>": 4, "<|startoftext|>": 5, "<|endoftext|>": 6}"#;

    #[test]
    fn folder_with_vocab_and_merges() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "vocab.json", TINY_VOCAB);
        write(dir.path(), "merges.txt", "#version: 0.2\nh i</w>\n");
        write(dir.path(), "tokenizer_config.json", r#"{"model_max_length": 8, "pad_token": {"content": "!"}}"#);
        let tok = ClipTokenizer::from_folder(dir.path()).unwrap();
        assert_eq!(tok.max_length(), 8);
        // SD 2's pad token `!` is special, so it is cut out whole before BPE could make it `!</w>`.
        assert_eq!(tok.encode("Hi!"), [5, 3, 0, 6, 0, 0, 0, 0]);
        // A byte outside this vocabulary becomes the unknown token (<|endoftext|>).
        assert_eq!(tok.encode("hi ?"), [5, 3, 6, 6, 0, 0, 0, 0]);
    }

    #[test]
    fn folder_with_tokenizer_json() {
        let dir = tempfile::tempdir().unwrap();
        let json = format!(
            r#"{{"model": {{"vocab": {TINY_VOCAB}, "merges": [["h", "i</w>"]]}},
                "added_tokens": [{{"id": 7, "content": "<x>", "special": false}}]}}"#
        );
        write(dir.path(), "tokenizer.json", &json);
        let tok = ClipTokenizer::from_folder(dir.path()).unwrap();
        assert_eq!(tok.max_length(), 77);
        assert_eq!(tok.vocab_size(), 8);
        assert_eq!(tok.encode("hi <X>")[..4], [5, 3, 7, 6]);
        assert_eq!(tok.encode("hi")[3], 6, "pads with <|endoftext|> by default");
    }

    #[test]
    fn bad_folders_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = ClipTokenizer::from_folder(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("vocab.json"), "{err:#}");
        write(dir.path(), "vocab.json", TINY_VOCAB);
        let err = ClipTokenizer::from_folder(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("merges.txt"), "{err:#}");
        write(dir.path(), "merges.txt", "#version: 0.2\nh i</w> x\n");
        let err = ClipTokenizer::from_folder(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("merges.txt: line 2"), "{err:#}");
        write(dir.path(), "merges.txt", "#version: 0.2\nh x\n");
        let err = ClipTokenizer::from_folder(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("not in the vocabulary"), "{err:#}");
        write(dir.path(), "vocab.json", "{");
        let err = ClipTokenizer::from_folder(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("vocab.json is not valid"), "{err:#}");
    }
}
