//! The 20 classes of the embedded model: ids 0-9 are Fashion-MNIST's labels in its own order, ids 10-19 the digits
//! 0-9. Names are the words captions use for them.

pub const NUM_CLASSES: usize = 20;

/// Fashion-MNIST's label `l` is class `l`; the digit `d` is class `DIGIT_BASE + d`.
pub const DIGIT_BASE: usize = 10;

pub struct Class {
    pub name: &'static str,
    /// Written out rather than guessed from the spelling: "an ankle boot", "an eight" but "a one".
    pub article: &'static str,
    /// The digit as a numeral ("7"), for digit classes.
    pub numeral: Option<&'static str>,
}

const fn item(name: &'static str, article: &'static str) -> Class {
    Class { name, article, numeral: None }
}

const fn digit(name: &'static str, article: &'static str, numeral: &'static str) -> Class {
    Class { name, article, numeral: Some(numeral) }
}

pub const CLASSES: [Class; NUM_CLASSES] = [
    // Fashion-MNIST's class 0 is "T-shirt/top": "t-shirt" alone keeps "top" free of a second meaning.
    item("t-shirt", "a"),
    item("trouser", "a"),
    item("pullover", "a"),
    item("dress", "a"),
    item("coat", "a"),
    item("sandal", "a"),
    item("shirt", "a"),
    item("sneaker", "a"),
    item("bag", "a"),
    item("ankle boot", "an"),
    digit("zero", "a", "0"),
    digit("one", "a", "1"),
    digit("two", "a", "2"),
    digit("three", "a", "3"),
    digit("four", "a", "4"),
    digit("five", "a", "5"),
    digit("six", "a", "6"),
    digit("seven", "a", "7"),
    digit("eight", "an", "8"),
    digit("nine", "a", "9"),
];

/// The class names by id: "t-shirt", ..., "ankle boot", "zero", ..., "nine".
pub fn class_names() -> Vec<&'static str> {
    CLASSES.iter().map(|c| c.name).collect()
}
