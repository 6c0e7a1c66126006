//! The sweep's figures as files (`dma sweep`): results.csv (one row per concept and setting), results.md (the
//! settings' means over the concepts, then each concept's table) and report.html (consistency against cost, one curve
//! per concept, and every prototype). A setting's cost is per DMA run, averaged over its runs: passes of one latent
//! through the UNet's encoder half (forward only, and forward and backward), through the whole UNet while
//! sampling, and the seconds its aligned steps took.
use super::plots::{escape, log_log_plot};
use super::report_html::image_tag;
use super::tables::{csv_field, figure};
use crate::evaluation::metrics::mean;
use crate::pipelines::sweep::{ConceptSweep, PointResult, SweepPoint};
use anyhow::Result;
use std::fmt::Write;

/// A setting's mean cost per run on one concept: encoder forward passes, encoder forward+backward passes, UNet
/// passes, alignment seconds.
fn cost(result: &PointResult) -> [f64; 4] {
    let n = result.runs.len().max(1) as f64;
    let sum = |f: &dyn Fn(&crate::pipelines::evaluation::RunCost) -> f64| result.runs.iter().map(|(_, _, c)| f(c)).sum::<f64>() / n;
    [
        sum(&|c| c.passes.encoder_forward as f64),
        sum(&|c| c.passes.encoder_backward as f64),
        sum(&|c| c.passes.unet_forward as f64),
        sum(&|c| c.alignment_seconds),
    ]
}

/// Passes through the encoder half, forward only or forward and backward, each counted once: the cost the
/// frontier is drawn against.
fn encoder_passes(result: &PointResult) -> f64 {
    let [forward, backward, _, _] = cost(result);
    forward + backward
}

/// Whether every seed's prototype got the same zero-shot class (None without a classifier).
fn one_class(result: &PointResult) -> Option<bool> {
    result.scores.classes.as_ref().map(|c| c.windows(2).all(|w| w[0] == w[1]))
}

pub fn sweep_csv(concepts: &[ConceptSweep], points: &[SweepPoint]) -> String {
    let mut out = String::from("prompt,setting");
    // The setting's name, then what it resolved to (K and the alignment), so a row reads on its own.
    out.push_str(
        ",K,align_steps,iters,later_iters,optimised,wide_target_steps,settle,keep_norm,lr,tol,window,\
         consistency,representativeness,median_sample_representativeness,sharpness,samples_sharpness,sharpness_vs_samples,\
         classes,one_class,encoder_forward,encoder_backward,encoder_passes,unet_forward,alignment_seconds\n",
    );
    for concept in concepts {
        for (point, result) in points.iter().zip(&concept.points) {
            let s = &result.scores;
            let [forward, backward, unet, seconds] = cost(result);
            let mut fields = vec![csv_field(&concept.prompt), csv_field(&point.label)];
            let a = &point.align;
            let optional = |v: Option<String>| v.unwrap_or_default();
            fields.extend([
                point.latents.to_string(),
                a.align_steps.to_string(),
                a.iters.to_string(),
                optional(a.later_iters.map(|v| v.to_string())),
                optional(a.optimised.map(|v| v.to_string())),
                optional(a.wide_target_steps.map(|v| v.to_string())),
                optional(a.settle.map(|v| v.to_string())),
                a.keep_norm.to_string(),
                a.lr.to_string(),
                a.tol.to_string(),
                a.window.to_string(),
                s.consistency.map_or_else(String::new, |v| v.to_string()),
                s.representativeness.to_string(),
                concept.samples.median_sample_representativeness.to_string(),
                s.sharpness.to_string(),
                concept.samples.samples_sharpness.to_string(),
                s.sharpness_vs_samples.to_string(),
                csv_field(&s.classes.as_ref().map_or_else(String::new, |c| c.join(" "))),
                one_class(result).map_or_else(String::new, |b| b.to_string()),
                forward.to_string(),
                backward.to_string(),
                (forward + backward).to_string(),
                unet.to_string(),
                seconds.to_string(),
            ]);
            let _ = writeln!(out, "{}", fields.join(","));
        }
    }
    out
}

/// A count as tables show it: thousands separated, no decimals.
fn count(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The table's header: `classes` is the means table's count of concepts whose prototypes share one class, or a
/// concept's classes per seed.
fn header(classes: &str) -> String {
    format!(
        "| setting | K | consistency | representativeness | sharpness / samples' | {classes} | encoder passes (fwd / fwd+bwd) | network passes | alignment s |\n|---|---|---|---|---|---|---|---|---|\n"
    )
}

fn row(out: &mut String, label: &str, latents: i64, figures: [Option<f64>; 3], one_class: String, [forward, backward, unet, seconds]: [f64; 4]) {
    let [consistency, representativeness, sharpness] = figures.map(figure);
    let _ = writeln!(
        out,
        "| {label} | {latents} | {consistency} | {representativeness} | {sharpness} | {one_class} | {} / {} | {} | {seconds:.1} |",
        count(forward),
        count(backward),
        count(unet)
    );
}

pub fn sweep_markdown(concepts: &[ConceptSweep], points: &[SweepPoint]) -> String {
    let mut out = String::from(
        "Consistency: mean pairwise CLIP cosine distance between the prototypes of different seeds. Representativeness: \
         CLIP cosine distance from a prototype to the mean embedding of the concept's samples. Both: lower is better. \
         Sharpness: variance of the Laplacian, over the samples'. One class: every seed's prototype of one zero-shot \
         class. Costs are per DMA run (one seed): passes of one latent through the network's path to h (a UNet's \
         encoder half, a DiT's blocks up to h; forward only / forward and backward), through the whole network while \
         sampling (both guidance branches), and the seconds the aligned steps took on this machine.\n\n",
    );
    if concepts.len() > 1 {
        let _ = writeln!(out, "## Mean over {} concepts\n", concepts.len());
        out.push_str(&header("one class"));
        for (j, point) in points.iter().enumerate() {
            let results: Vec<&PointResult> = concepts.iter().map(|c| &c.points[j]).collect();
            let figure_mean = |f: &dyn Fn(&PointResult) -> Option<f64>| mean(&results.iter().filter_map(|r| f(r)).collect::<Vec<_>>());
            let costs: Vec<[f64; 4]> = results.iter().map(|r| cost(r)).collect();
            let cost_mean = std::array::from_fn(|i| costs.iter().map(|c| c[i]).sum::<f64>() / costs.len() as f64);
            let classed: Vec<bool> = results.iter().filter_map(|r| one_class(r)).collect();
            let one = if classed.is_empty() { "-".into() } else { format!("{}/{}", classed.iter().filter(|b| **b).count(), classed.len()) };
            let figures = [figure_mean(&|r| r.scores.consistency), figure_mean(&|r| Some(r.scores.representativeness)), figure_mean(&|r| Some(r.scores.sharpness_vs_samples))];
            row(&mut out, &point.label, point.latents, figures, one, cost_mean);
        }
        let medians: Vec<f64> = concepts.iter().map(|c| c.samples.median_sample_representativeness).collect();
        let _ = writeln!(out, "\nThe median sample's representativeness, mean over the concepts: {}.\n", figure(mean(&medians)));
    }
    for concept in concepts {
        let _ = writeln!(out, "## {}\n", concept.prompt);
        out.push_str(&header("classes"));
        for (point, result) in points.iter().zip(&concept.points) {
            let s = &result.scores;
            let classes = s.classes.as_ref().map_or_else(|| "-".into(), |c| c.join(", "));
            row(&mut out, &point.label, point.latents, [s.consistency, Some(s.representativeness), Some(s.sharpness_vs_samples)], classes, cost(result));
        }
        let _ = writeln!(out, "\nThe median sample's representativeness: {}.\n", figure(Some(concept.samples.median_sample_representativeness)));
    }
    out
}

/// The page: the frontier plot (one curve per concept, through its settings in order of cost), the means table,
/// and per concept each setting's prototypes for every seed.
pub fn sweep_html(title: &str, settings: &str, concepts: &[ConceptSweep], points: &[SweepPoint]) -> Result<String> {
    let mut out = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title><style>\
         body{{font-family:sans-serif;margin:1.5em}} img{{image-rendering:pixelated;margin:2px}} \
         table{{border-collapse:collapse;margin:0.5em 0}} td,th{{border:1px solid #ccc;padding:3px 6px;text-align:center}} \
         pre{{background:#f6f6f6;padding:0.5em;overflow-x:auto}}</style></head><body><h1>{0}</h1>",
        escape(title)
    );
    let series: Vec<(String, Vec<(f64, f64)>)> = concepts
        .iter()
        .map(|c| (c.prompt.clone(), c.points.iter().map(|r| (encoder_passes(r), r.scores.consistency.unwrap_or(f64::NAN))).collect()))
        .collect();
    out.push_str("<h2>Consistency against cost</h2>");
    if concepts.iter().flat_map(|c| &c.points).all(|r| r.scores.consistency.is_none()) {
        out.push_str("<p>Consistency compares the prototypes of different seeds: with one seed (--seeds 1) there is none to plot.</p>");
    }
    out.push_str(&log_log_plot("consistency (lower is better)", "encoder passes per run (forward + forward and backward)", "consistency", &series));
    let markdown = sweep_markdown(concepts, points);
    let _ = write!(out, "<h2>Figures</h2><pre>{}</pre>", escape(&markdown));
    for concept in concepts {
        let _ = write!(out, "<section><h2>{}</h2><table><tr><th>setting</th>", escape(&concept.prompt));
        if let Some(first) = concept.points.first() {
            for (seed, _, _) in &first.runs {
                let _ = write!(out, "<th>seed {seed}</th>");
            }
        }
        out.push_str("</tr>");
        for (point, result) in points.iter().zip(&concept.points) {
            let _ = write!(out, "<tr><th>{}</th>", escape(&point.label));
            for (seed, image, _) in &result.runs {
                let _ = write!(out, "<td>{}</td>", image_tag(image, &format!("{}, seed {seed}", point.label))?);
            }
            out.push_str("</tr>");
        }
        out.push_str("</table></section>");
    }
    let _ = write!(out, "<h2>Settings</h2><pre>{}</pre></body></html>", escape(settings));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_are_grouped_by_thousands() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(1000.0), "1,000");
        assert_eq!(count(768000.0), "768,000");
        assert_eq!(count(1234567.4), "1,234,567");
    }
}
