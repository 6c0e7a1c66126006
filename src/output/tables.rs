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

/// A figure a run may not have, empty where it has none.
fn optional(value: Option<f64>) -> String {
    value.map_or_else(String::new, |v| v.to_string())
}

fn classes_text(scores: &MethodScores) -> String {
    scores.classes.as_ref().map_or_else(String::new, |c| c.join(" "))
}

pub fn results_csv(concepts: &[(String, &ConceptScores)]) -> String {
    let mut out = String::from(
        "subject,prompt,method,consistency,representativeness,sharpness,sharpness_vs_samples,samples_sharpness,median_sample_representativeness,classes,dreamsim_consistency,image_reward,samples_image_reward\n",
    );
    for (subject, concept) in concepts {
        for m in &concept.methods {
            let fields = [
                csv_field(subject),
                csv_field(&concept.prompt),
                m.method.slug().to_string(),
                optional(m.consistency),
                m.representativeness.to_string(),
                m.sharpness.to_string(),
                m.sharpness_vs_samples.to_string(),
                concept.samples_sharpness.to_string(),
                concept.median_sample_representativeness.to_string(),
                csv_field(&classes_text(m)),
                // The instruments added later come last, so readers by position keep working.
                optional(m.dreamsim_consistency),
                optional(m.image_reward),
                optional(concept.samples_image_reward),
            ];
            writeln!(out, "{}", fields.join(",")).expect("writing to a String");
        }
    }
    out
}

/// One table: a row per method, each figure the mean over `concepts`; the ImageReward column where they have it.
fn method_table(out: &mut String, concepts: &[&ConceptScores], with_classes: bool) {
    let with_reward = concepts.iter().any(|c| c.samples_image_reward.is_some());
    let with_dreamsim = concepts.iter().any(|c| c.methods.iter().any(|m| m.dreamsim_consistency.is_some()));
    let dreamsim_cell = |cell: String| if with_dreamsim { format!(" {cell} |") } else { String::new() };
    let extra = |reward: String, classes: String| {
        let mut cells = String::new();
        if with_reward {
            let _ = write!(cells, " {reward} |");
        }
        if with_classes {
            let _ = write!(cells, " {classes} |");
        }
        cells
    };
    let _ = writeln!(
        out,
        "| method | consistency (CLIP) |{} representativeness (CLIP) | sharpness | sharpness / samples' |{}",
        dreamsim_cell("consistency (DreamSim)".into()),
        extra("quality (ImageReward)".into(), "classes".into())
    );
    let _ = writeln!(out, "|---|---|{}---|---|---|{}", dreamsim_cell("---".into()), extra("---".into(), "---".into()));
    let methods: Vec<Method> = concepts.first().map(|c| c.methods.iter().map(|m| m.method).collect()).unwrap_or_default();
    for (i, method) in methods.iter().enumerate() {
        let column = |f: &dyn Fn(&MethodScores) -> Option<f64>| mean(&concepts.iter().filter_map(|c| f(&c.methods[i])).collect::<Vec<_>>());
        let classes = concepts.iter().map(|c| classes_text(&c.methods[i])).collect::<Vec<_>>().join("; ");
        let _ = writeln!(
            out,
            "| {} | {} |{} {} | {} | {} |{}",
            method.label(),
            figure(column(&|m| m.consistency)),
            dreamsim_cell(figure(column(&|m| m.dreamsim_consistency))),
            figure(column(&|m| Some(m.representativeness))),
            figure(column(&|m| Some(m.sharpness))),
            figure(column(&|m| Some(m.sharpness_vs_samples))),
            extra(figure(column(&|m| m.image_reward)), classes),
        );
    }
    let samples = |f: &dyn Fn(&ConceptScores) -> Option<f64>| figure(mean(&concepts.iter().filter_map(|c| f(c)).collect::<Vec<_>>()));
    let _ = writeln!(
        out,
        "| samples (median / mean) | - |{} {} | {} | 1 |{}",
        dreamsim_cell("-".into()),
        samples(&|c| Some(c.median_sample_representativeness)),
        samples(&|c| Some(c.samples_sharpness)),
        extra(samples(&|c| c.samples_image_reward), String::new())
    );
}

/// The markdown summary: the paper's Table 1 over all concepts, then each concept's own table.
pub fn results_markdown(concepts: &[(String, &ConceptScores)]) -> String {
    let mut out = String::from(
        "Consistency: mean pairwise CLIP cosine distance between prototypes from different seeds (lower is better). \
         Representativeness: CLIP cosine distance from a prototype to the mean embedding of the concept's samples \
         (lower is better). Sharpness: variance of the Laplacian.",
    );
    if concepts.iter().any(|(_, c)| c.methods.iter().any(|m| m.dreamsim_consistency.is_some())) {
        out.push_str(" Consistency (DreamSim): the same with DreamSim's distance.");
    }
    if concepts.iter().any(|(_, c)| c.samples_image_reward.is_some()) {
        out.push_str(" Quality: ImageReward against the prompt (higher is better).");
    }
    out.push_str("\n\n");
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
