//! The evaluation's figures as files: results.csv (one row per concept and method) and a markdown table in the
//! shape of the paper's Table 1 (methods down, metrics across, averaged over concepts), then one per concept.
use crate::evaluation::metrics::mean;
use crate::pipelines::evaluation::{ConceptScores, Method, MethodScores};
use std::fmt::Write;

/// A figure as tables show it: four decimals, `-` where there is none.
pub fn figure(value: Option<f64>) -> String {
    value.filter(|v| v.is_finite()).map_or_else(|| "-".to_string(), |v| format!("{v:.4}"))
}

/// A CSV field: quoted when it holds a comma, quote or line break.
pub(crate) fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn classes_text(scores: &MethodScores) -> String {
    scores.classes.as_ref().map_or_else(String::new, |c| c.join(" "))
}

pub fn results_csv(concepts: &[(String, &ConceptScores)]) -> String {
    let mut out = String::from(
        "subject,prompt,method,consistency,representativeness,sharpness,sharpness_vs_samples,samples_sharpness,median_sample_representativeness,classes\n",
    );
    for (subject, concept) in concepts {
        for m in &concept.methods {
            let fields = [
                csv_field(subject),
                csv_field(&concept.prompt),
                m.method.slug().to_string(),
                m.consistency.map_or_else(String::new, |v| v.to_string()),
                m.representativeness.to_string(),
                m.sharpness.to_string(),
                m.sharpness_vs_samples.to_string(),
                concept.samples_sharpness.to_string(),
                concept.median_sample_representativeness.to_string(),
                csv_field(&classes_text(m)),
            ];
            writeln!(out, "{}", fields.join(",")).expect("writing to a String");
        }
    }
    out
}

/// One table: a row per method, each figure the mean over `concepts`.
fn method_table(out: &mut String, concepts: &[&ConceptScores], with_classes: bool) {
    let header = "| method | consistency (CLIP) | representativeness (CLIP) | sharpness | sharpness / samples' |";
    let _ = writeln!(out, "{header}{}", if with_classes { " classes |" } else { "" });
    let _ = writeln!(out, "|---|---|---|---|---|{}", if with_classes { "---|" } else { "" });
    let methods: Vec<Method> = concepts.first().map(|c| c.methods.iter().map(|m| m.method).collect()).unwrap_or_default();
    for (i, method) in methods.iter().enumerate() {
        let column = |f: &dyn Fn(&MethodScores) -> Option<f64>| mean(&concepts.iter().filter_map(|c| f(&c.methods[i])).collect::<Vec<_>>());
        let _ = write!(
            out,
            "| {} | {} | {} | {} | {} |",
            method.label(),
            figure(column(&|m| m.consistency)),
            figure(column(&|m| Some(m.representativeness))),
            figure(column(&|m| Some(m.sharpness))),
            figure(column(&|m| Some(m.sharpness_vs_samples))),
        );
        if with_classes {
            let _ = write!(out, " {} |", concepts.iter().map(|c| classes_text(&c.methods[i])).collect::<Vec<_>>().join("; "));
        }
        out.push('\n');
    }
    let samples = |f: &dyn Fn(&ConceptScores) -> f64| figure(mean(&concepts.iter().map(|c| f(c)).collect::<Vec<_>>()));
    let _ = writeln!(
        out,
        "| samples (median / mean) | - | {} | {} | 1 |{}",
        samples(&|c| c.median_sample_representativeness),
        samples(&|c| c.samples_sharpness),
        if with_classes { " |" } else { "" }
    );
}

/// The markdown summary: the paper's Table 1 over all concepts, then each concept's own table.
pub fn results_markdown(concepts: &[(String, &ConceptScores)]) -> String {
    let mut out = String::from(
        "Consistency: mean pairwise CLIP cosine distance between prototypes from different seeds (lower is better). \
         Representativeness: CLIP cosine distance from a prototype to the mean embedding of the concept's samples \
         (lower is better). Sharpness: variance of the Laplacian.\n\n",
    );
    let all: Vec<&ConceptScores> = concepts.iter().map(|(_, c)| *c).collect();
    if all.len() > 1 {
        let _ = writeln!(out, "## Mean over {} subjects\n", all.len());
        method_table(&mut out, &all, false);
        out.push('\n');
    }
    for (subject, concept) in concepts {
        let _ = writeln!(out, "## {subject}\n");
        method_table(&mut out, &[concept], concept.sample_classes.is_some());
        if let Some(classes) = &concept.sample_classes {
            let counts: Vec<String> = classes.iter().map(|(name, n)| format!("{name} {n}")).collect();
            let _ = writeln!(out, "\nSamples' zero-shot classes: {}.", counts.join(", "));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_with_commas_or_quotes_are_quoted() {
        assert_eq!(csv_field("a dog"), "a dog");
        assert_eq!(csv_field("a red, shiny car"), "\"a red, shiny car\"");
        assert_eq!(csv_field("the \"best\" dog"), "\"the \"\"best\"\" dog\"");
    }
}
