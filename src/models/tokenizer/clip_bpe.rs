use super::{
    added_entry, alternation, declared, declared_specials, model_max_length, read_vocab, split_on, AddedToken,
    Declared, DEFAULT_MAX_LENGTH,
};
use crate::files::read_json;
use anyhow::{bail, ensure, Context, Result};
use regex::Regex;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use unicode_normalization::UnicodeNormalization;

/// OpenAI's merge list, which CLIP's vocabulary is built from; used when a checkpoint ships no tokenizer.
const OPENAI_BPE_GZ: &[u8] = include_bytes!("../../../assets/clip/bpe_simple_vocab_16e6.txt.gz");

const PIECE_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// GPT-2's split, which transformers' byte-level step applies again to each piece (less its whitespace
/// alternatives: pieces hold none). It only changes the special-token names that reach BPE as text
/// ("<|ENDOFTEXT|>" lowercased becomes "<|", "endoftext", "|>").
const BYTE_LEVEL_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+";

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

/// The special tokens' names.
struct SpecialNames {
    bos: String,
    eos: String,
    unk: String,
    pad: String,
}

impl SpecialNames {
    /// The names a folder declares, and transformers' CLIPTokenizer's defaults for the others: `<|startoftext|>`,
    /// and `<|endoftext|>` for the rest. (CLIPTokenizer builds its start and end tokens from these names, whatever
    /// post-processor a tokenizer.json holds.)
    fn clip(specials: &[Declared]) -> Self {
        let name = |key: &str, default: &str| declared(specials, key).unwrap_or(default).to_string();
        let eot = "<|endoftext|>";
        Self {
            bos: name("bos_token", "<|startoftext|>"),
            eos: name("eos_token", eot),
            unk: name("unk_token", eot),
            pad: name("pad_token", eot),
        }
    }
}

/// The `tokenizers` normalizer of CLIPTokenizer: NFC, runs of whitespace become one space, then lowercase
/// char by char (not `str::to_lowercase`, whose final-sigma rule `tokenizers` does not apply).
pub(super) fn clean(text: &str) -> String {
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

impl ClipTokenizer {
    /// CLIP's own vocabulary (49408 tokens) from OpenAI's merge list, padding with `<|endoftext|>` as SD 1.x does;
    /// for checkpoints that ship no tokenizer.
    pub fn openai_default() -> Result<Self> {
        Self::openai(SpecialNames::clip(&[]))
    }

    /// As `openai_default`, padding with `pad` (SD 2.x: "!", id 0), which is then also cut out of prompts whole.
    pub fn openai_default_with_pad(pad: &str) -> Result<Self> {
        Self::openai(SpecialNames { pad: pad.into(), ..SpecialNames::clip(&[]) })
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

        let names = SpecialNames::clip(&declared_specials(dir, config.as_ref())?);
        let max_length = model_max_length(config.as_ref()).unwrap_or(DEFAULT_MAX_LENGTH);
        Self::build(vocab, &merges, added, names, max_length, &source)
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
        let mut ids = self.untruncated(text);
        ids.truncate(self.max_length - 1);
        ids.push(self.eos);
        ids.resize(self.max_length, self.pad);
        ids
    }

    /// The start token and all of the text's tokens, however many.
    pub fn untruncated(&self, text: &str) -> Vec<i64> {
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
