//! BERT's uncased WordPiece tokenizer (`vocab.txt`), giving the ids of transformers' `BertTokenizer` with
//! `do_lower_case=True`, as BLIP (BLIP-VQA, ImageReward) uses it.
//!
//! The steps are BertTokenizer's, in its order:
//! 1. clean: drop NUL, U+FFFD and control characters; every whitespace character becomes a space;
//! 2. put spaces around CJK ideographs, so each is a word of its own;
//! 3. split on whitespace; lowercase each word, decompose it (NFD) and drop its combining marks (accents);
//! 4. split each word before and after every punctuation character (ASCII symbols count as punctuation);
//! 5. WordPiece: the longest vocabulary entry from the word's start, then the longest `##`-prefixed entry from
//!    where it ended, and so on; a word that cannot be covered, or of more than 100 characters, is `[UNK]`.
//!
//! Before these steps, special tokens written in the text (`[SEP]`, ...) are cut out whole.
//! `encode` puts `[CLS]` before and `[SEP]` after, as the tokenizer does for one sequence. Step 3 drops every
//! combining mark where BERT drops nonspacing ones (Mn) only: spacing marks (Mc, in Indic scripts) differ.
use anyhow::{ensure, Context, Result};
use regex::Regex;
use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// BertTokenizer's special tokens, matched whole in the raw text.
const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
/// BertTokenizer's `max_input_chars_per_word`.
const MAX_WORD_CHARS: usize = 100;

static CONTROL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[\p{Cc}\p{Cf}]$").expect("valid class"));
static SPACE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\p{Zs}$").expect("valid class"));
static PUNCTUATION: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\p{P}$").expect("valid class"));

fn char_matches(class: &Regex, c: char) -> bool {
    class.is_match(c.encode_utf8(&mut [0; 4]))
}

fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || char_matches(&SPACE, c)
}

/// Tab, newline and carriage return are whitespace, not control characters, as in BERT.
fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && char_matches(&CONTROL, c)
}

fn is_punctuation(c: char) -> bool {
    matches!(c as u32, 33..=47 | 58..=64 | 91..=96 | 123..=126) || char_matches(&PUNCTUATION, c)
}

/// The CJK Unified Ideographs blocks BERT splits character by character (not Hangul, Hiragana or Katakana).
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

/// The words of `text` after steps 1-4: lowercased, unaccented, punctuation apart.
fn basic_tokens(text: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{FFFD}' || is_control(c) {
            continue;
        }
        if is_whitespace(c) {
            cleaned.push(' ');
        } else if is_cjk(c) {
            cleaned.extend([' ', c, ' ']);
        } else {
            cleaned.push(c);
        }
    }
    let mut out = Vec::new();
    for word in cleaned.split(' ').filter(|w| !w.is_empty()) {
        let plain: String = word.to_lowercase().nfd().filter(|&c| !is_combining_mark(c)).collect();
        let mut current = String::new();
        for c in plain.chars() {
            if is_punctuation(c) {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                out.push(c.to_string());
            } else {
                current.push(c);
            }
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out
}

pub struct WordPieceTokenizer {
    vocab: HashMap<String, i64>,
    unk: i64,
    cls: i64,
    sep: i64,
    pad: i64,
}

impl WordPieceTokenizer {
    /// A BERT `vocab.txt`: one token per line, its id the line's number; it must hold `[UNK]`, `[CLS]`, `[SEP]`
    /// and `[PAD]`.
    pub fn from_vocab_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the vocabulary {}", path.display()))?;
        let mut vocab = HashMap::new();
        for (id, token) in text.lines().enumerate() {
            // A token seen twice keeps its first id, as BertTokenizer's vocabulary does.
            vocab.entry(token.to_string()).or_insert(id as i64);
        }
        let special = |name: &str| {
            vocab.get(name).copied().with_context(|| format!("{} is not a BERT vocabulary: it has no `{name}` token", path.display()))
        };
        Ok(Self { unk: special("[UNK]")?, cls: special("[CLS]")?, sep: special("[SEP]")?, pad: special("[PAD]")?, vocab })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// `[CLS]` text `[SEP]`.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut ids = vec![self.cls];
        ids.extend(self.pieces(text));
        ids.push(self.sep);
        ids
    }

    /// `encode` cut to `max_length` (keeping `[SEP]` last) and padded to it with `[PAD]`, with its attention mask
    /// (1 for tokens, 0 for padding): BertTokenizer's `padding="max_length", truncation=True`.
    pub fn encode_padded(&self, text: &str, max_length: usize) -> Result<(Vec<i64>, Vec<i64>)> {
        ensure!(max_length >= 2, "a maximum length of {max_length} holds no [CLS] and [SEP]");
        let mut ids = self.encode(text);
        if ids.len() > max_length {
            ids.truncate(max_length - 1);
            ids.push(self.sep);
        }
        let mask: Vec<i64> = (0..max_length).map(|i| i64::from(i < ids.len())).collect();
        ids.resize(max_length, self.pad);
        Ok((ids, mask))
    }

    /// The text's WordPiece ids, no `[CLS]` or `[SEP]` around them. A special token written in the text exactly
    /// (`[SEP]`, not `[sep]`) is that token, as in BertTokenizer.
    pub fn pieces(&self, text: &str) -> Vec<i64> {
        let mut ids = Vec::new();
        let mut rest = text;
        loop {
            let next = SPECIAL_TOKENS
                .iter()
                .filter_map(|&token| Some((rest.find(token)?, token)))
                .filter(|(_, token)| self.vocab.contains_key(*token))
                .min();
            let (before, special) = match next {
                Some((at, token)) => (&rest[..at], Some(token)),
                None => (rest, None),
            };
            for word in basic_tokens(before) {
                match self.word_pieces(&word) {
                    Some(pieces) => ids.extend(pieces),
                    None => ids.push(self.unk),
                }
            }
            let Some(token) = special else { return ids };
            ids.push(self.vocab[token]);
            rest = &rest[before.len() + token.len()..];
        }
    }

    /// Greedy longest-match-first; None when the word cannot be covered or is too long.
    fn word_pieces(&self, word: &str) -> Option<Vec<i64>> {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_WORD_CHARS {
            return None;
        }
        let mut ids = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let found = (start + 1..=chars.len()).rev().find_map(|end| {
                let piece: String = chars[start..end].iter().collect();
                let key = if start > 0 { format!("##{piece}") } else { piece };
                self.vocab.get(&key).map(|&id| (id, end))
            });
            let (id, end) = found?;
            ids.push(id);
            start = end;
        }
        Some(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_tokens_split_punctuation_accents_and_ideographs() {
        assert_eq!(basic_tokens("Don't  stop!\tCafé 中文"), ["don", "'", "t", "stop", "!", "cafe", "中", "文"]);
        assert_eq!(basic_tokens("a\u{0}b\u{200B}c"), ["abc"]);
    }
}
