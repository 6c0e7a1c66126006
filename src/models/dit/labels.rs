//! A class-conditional model's class names: model_index.json's `id2label` (class id -> comma-separated names, e.g.
//! "great white shark, white shark, man-eater"), matched as a prompt the way DiTPipeline.get_label_ids does, but
//! case-insensitive; `class N` names class N whether or not the folder has names.
use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;

pub struct ClassLabels {
    /// The number of classes (ids 0..classes; the null class is `classes`).
    pub classes: i64,
    /// Each id's names, in id2label's order (empty without id2label), and the added classes' names.
    names: BTreeMap<i64, Vec<String>>,
    /// Classes added after the null class (learned class embeddings): ids classes + 1 ..= classes + added.
    added: i64,
}

impl ClassLabels {
    /// From id2label (None where the folder has none), for a model of `classes` classes.
    pub fn new(id2label: Option<&serde_json::Value>, classes: i64) -> Result<Self> {
        let mut names = BTreeMap::new();
        if let Some(map) = id2label {
            let map = map.as_object().context("`id2label` is not an object of class ids to names")?;
            for (id, label) in map {
                let id: i64 = id.trim().parse().with_context(|| format!("`id2label` has the key {id:?}, which is not a class id"))?;
                ensure!((0..classes).contains(&id), "`id2label` names class {id}, but the model has classes 0 to {}", classes - 1);
                let label = label.as_str().with_context(|| format!("`id2label`'s entry for class {id} is not a string"))?;
                names.insert(id, label.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect());
            }
        }
        Ok(Self { classes, names, added: 0 })
    }

    pub fn has_names(&self) -> bool {
        !self.names.is_empty()
    }

    /// What a class is called in outputs: its first name, or `class N`.
    pub fn display_name(&self, id: i64) -> String {
        self.names.get(&id).and_then(|n| n.first()).cloned().unwrap_or_else(|| format!("class {id}"))
    }

    /// The class a prompt names: one of id2label's names (whole, case-insensitive), or `class N`.
    pub fn id_of(&self, prompt: &str) -> Result<i64> {
        let wanted = prompt.trim().to_lowercase();
        if let Some(id) = wanted.strip_prefix("class ").and_then(|n| n.trim().parse::<i64>().ok()) {
            return self.check_id(id);
        }
        let matches: Vec<i64> = self.names.iter().filter(|(_, names)| names.iter().any(|n| n.to_lowercase() == wanted)).map(|(id, _)| *id).collect();
        match matches.as_slice() {
            [id] => Ok(*id),
            [] if !self.has_names() => {
                bail!("the prompt {prompt:?} names no class: this model's folder has no class names (`id2label` in model_index.json); give the class with --class-id N")
            }
            [] => bail!("the prompt {prompt:?} names no class of this model; the nearest names: {}; or give the class with --class-id N", self.nearest(&wanted).join("; ")),
            several => bail!("the prompt {prompt:?} names several classes ({several:?}); give one with --class-id N"),
        }
    }

    /// Refuses an id outside the model's classes and those added.
    pub fn check_id(&self, id: i64) -> Result<i64> {
        let added = self.classes + 1..=self.classes + self.added;
        ensure!((0..self.classes).contains(&id) || added.contains(&id), "class {id} does not exist: this model has classes 0 to {}", self.classes - 1);
        Ok(id)
    }

    /// Refuses a name no class can be added under: empty, with a comma, or already a class's.
    pub fn check_new_name(&self, name: &str) -> Result<()> {
        ensure!(!name.trim().is_empty() && !name.contains(','), "a class name cannot be empty or contain a comma: {name:?}");
        if let Ok(id) = self.id_of(name) {
            bail!("the class name {name:?} is taken by class {id}");
        }
        Ok(())
    }

    /// Names the next added class `name` (a learned class embedding, numbered after the null class and those
    /// added before); a name some class already has is refused. Returns its id.
    pub fn add(&mut self, name: &str) -> Result<i64> {
        self.check_new_name(name)?;
        self.added += 1;
        let id = self.classes + self.added;
        self.names.insert(id, vec![name.trim().to_string()]);
        Ok(id)
    }

    /// The five names nearest `wanted` by edit distance (ties in id order), each with its id.
    fn nearest(&self, wanted: &str) -> Vec<String> {
        let mut scored: Vec<(usize, i64, &String)> =
            self.names.iter().flat_map(|(id, names)| names.iter().map(move |n| (edit_distance(&n.to_lowercase(), wanted), *id, n))).collect();
        scored.sort_by_key(|(d, id, _)| (*d, *id));
        scored.into_iter().take(5).map(|(_, id, n)| format!("{n:?} (class {id})")).collect()
    }
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(previous + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> ClassLabels {
        let id2label = serde_json::json!({"0": "tench, Tinca tinca", "1": "great white shark, white shark", "2": "Egyptian cat"});
        ClassLabels::new(Some(&id2label), 1000).unwrap()
    }

    #[test]
    fn names_match_whole_and_case_insensitive() {
        let l = labels();
        assert_eq!(l.id_of("white shark").unwrap(), 1);
        assert_eq!(l.id_of("  egyptian CAT ").unwrap(), 2);
        assert_eq!(l.id_of("Tinca tinca").unwrap(), 0);
        assert_eq!(l.id_of("class 999").unwrap(), 999);
        assert!(l.id_of("shark").is_err(), "a part of a name is not a name");
        assert!(l.id_of("class 1000").unwrap_err().to_string().contains("classes 0 to 999"));
    }

    #[test]
    fn an_unknown_name_lists_the_nearest() {
        let err = labels().id_of("white sharks").unwrap_err().to_string();
        assert!(err.starts_with("the prompt \"white sharks\" names no class of this model; the nearest names: \"white shark\" (class 1)"), "{err}");
        assert!(err.contains("--class-id"), "{err}");
    }

    #[test]
    fn without_names_a_prompt_asks_for_the_class_id() {
        let l = ClassLabels::new(None, 10).unwrap();
        assert!(l.id_of("cat").unwrap_err().to_string().contains("no class names (`id2label`"));
        assert_eq!(l.display_name(3), "class 3");
        assert_eq!(labels().display_name(1), "great white shark");
    }

    #[test]
    fn added_classes_follow_the_null_class_and_are_named() {
        let mut l = labels();
        assert_eq!(l.add("<shark-mode0>").unwrap(), 1001, "the null class 1000 keeps its id");
        assert_eq!(l.add("<shark-mode1>").unwrap(), 1002);
        assert_eq!(l.id_of("<SHARK-mode1>").unwrap(), 1002);
        assert_eq!(l.check_id(1001).unwrap(), 1001);
        assert!(l.check_id(1000).is_err() && l.check_id(1003).is_err(), "the null class and unused ids name no class");
        assert!(l.add("white shark").unwrap_err().to_string().contains("taken by class 1"));
        assert!(l.add("a, b").is_err());
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("shark", "shark"), 0);
    }
}
