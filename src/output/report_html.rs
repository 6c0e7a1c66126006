//! report.html: one self-contained page (images embedded as data URIs, plots as inline SVG, no script) with, for
//! several subjects, their prototypes side by side, then per subject each method's prototype for every seed, a few samples, the metric table, and DMA's alignment loss
//! and h spread per step.
use super::images::png_bytes;
use super::plots::{escape, log_line_plot};
use super::tables::figure;
use crate::pipelines::evaluation::{ConceptScores, Method, SeedOutcome};
use anyhow::Result;
use base64::Engine;
use std::fmt::Write;
use tch::Tensor;

/// Samples shown per seed.
const SAMPLES_SHOWN: i64 = 6;
/// Images are shown at least this many CSS pixels wide (the embedded model's are 32).
const MIN_SIDE: i64 = 96;

/// One subject of the report: a concept (`dma eval`) or a model's take on it (`dma compare`).
pub struct Section<'a> {
    pub title: String,
    pub scores: &'a ConceptScores,
    pub outcomes: &'a [SeedOutcome],
}

pub(crate) fn image_tag(image: &Tensor, alt: &str) -> Result<String> {
    let bytes = png_bytes(image, &[])?;
    let side = image.size()[2].max(MIN_SIDE);
    Ok(format!(
        r#"<img alt="{}" width="{side}" src="data:image/png;base64,{}">"#,
        escape(alt),
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

fn section_html(out: &mut String, section: &Section) -> Result<()> {
    let _ = write!(out, "<section><h2>{}</h2>", escape(&section.title));
    out.push_str("<table class=\"images\"><tr><th></th>");
    for outcome in section.outcomes {
        let _ = write!(out, "<th>seed {}</th>", outcome.seed);
    }
    out.push_str("</tr>");
    let methods = section.outcomes.first().map_or(0, |o| o.prototypes.len());
    for i in 0..methods {
        let label = section.outcomes[0].prototypes[i].0.label();
        let _ = write!(out, "<tr><th>{}</th>", escape(label));
        for outcome in section.outcomes {
            let _ = write!(out, "<td>{}</td>", image_tag(&outcome.prototypes[i].1, &format!("{label}, seed {}", outcome.seed))?);
        }
        out.push_str("</tr>");
    }
    out.push_str("</table><h3>Samples</h3><div class=\"samples\">");
    for outcome in section.outcomes {
        for j in 0..SAMPLES_SHOWN.min(outcome.samples.size()[0]) {
            out.push_str(&image_tag(&outcome.samples.get(j), &format!("sample {j}, seed {}", outcome.seed))?);
        }
    }
    out.push_str("</div>");

    let scores = section.scores;
    out.push_str(
        "<h3>Figures</h3><table class=\"figures\"><tr><th>method</th><th>consistency</th><th>representativeness</th>\
         <th>sharpness</th><th>sharpness / samples'</th><th>zero-shot classes</th></tr>",
    );
    for m in &scores.methods {
        let classes = m.classes.as_ref().map_or_else(String::new, |c| c.join(", "));
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(m.method.label()),
            figure(m.consistency),
            figure(Some(m.representativeness)),
            figure(Some(m.sharpness)),
            figure(Some(m.sharpness_vs_samples)),
            escape(&classes)
        );
    }
    let sample_classes = scores.sample_classes.as_ref().map_or_else(String::new, |c| {
        c.iter().map(|(name, n)| format!("{name} {n}")).collect::<Vec<_>>().join(", ")
    });
    let _ = write!(
        out,
        "<tr><td>samples (median / mean)</td><td>-</td><td>{}</td><td>{}</td><td>1</td><td>{}</td></tr></table>",
        figure(Some(scores.median_sample_representativeness)),
        figure(Some(scores.samples_sharpness)),
        escape(&sample_classes)
    );

    let logged: Vec<&SeedOutcome> = section.outcomes.iter().filter(|o| !o.dma_log.is_empty()).collect();
    if !logged.is_empty() {
        let series = |f: &dyn Fn(&crate::method::StepLog) -> f64| -> Vec<(String, Vec<f64>)> {
            logged.iter().map(|o| (format!("seed {}", o.seed), o.dma_log.iter().map(f).collect())).collect()
        };
        out.push_str("<h3>DMA alignment per step</h3><div class=\"plots\">");
        out.push_str(&log_line_plot("alignment loss after optimisation", "aligned step", &series(&|s| s.loss_after)));
        out.push_str(&log_line_plot("h spread across latents, before the step", "aligned step", &series(&|s| s.spread_before)));
        out.push_str("</div>");
    }
    out.push_str("</section>");
    Ok(())
}

/// Every subject's DMA prototypes (or its first method's, without DMA) in one table, a row per subject: for
/// `dma compare`, the models side by side.
fn overview_html(out: &mut String, sections: &[Section]) -> Result<()> {
    out.push_str("<section><h2>Side by side</h2><table class=\"images\">");
    for section in sections {
        let Some(first) = section.outcomes.first() else { continue };
        let column = first.prototypes.iter().position(|(m, _)| *m == Method::Dma).unwrap_or(0);
        let Some((method, _)) = first.prototypes.get(column) else { continue };
        let _ = write!(out, "<tr><th>{}<br>{}</th>", escape(&section.title), escape(method.label()));
        for outcome in section.outcomes {
            let _ = write!(out, "<td>{}</td>", image_tag(&outcome.prototypes[column].1, &format!("{}, seed {}", section.title, outcome.seed))?);
        }
        out.push_str("</tr>");
    }
    out.push_str("</table></section>");
    Ok(())
}

/// The whole page. `settings` (shown verbatim) says how the figures were made.
pub fn report_html(title: &str, settings: &str, sections: &[Section]) -> Result<String> {
    let mut out = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{0}</title><style>\
         body{{font-family:sans-serif;margin:1.5em}} img{{image-rendering:pixelated;margin:2px}} \
         table{{border-collapse:collapse;margin:0.5em 0}} td,th{{border:1px solid #ccc;padding:3px 6px;text-align:center}} \
         .figures td:first-child{{text-align:left}} pre{{background:#f6f6f6;padding:0.5em;overflow-x:auto}} \
         .plots svg{{margin-right:1em}}</style></head><body><h1>{0}</h1>\
         <p>Consistency: mean pairwise CLIP cosine distance between prototypes from different seeds. Representativeness: \
         CLIP cosine distance from a prototype to the mean embedding of the concept's samples. Both: lower is better. \
         Sharpness: variance of the Laplacian.</p>",
        escape(title)
    );
    if sections.len() > 1 {
        overview_html(&mut out, sections)?;
    }
    for section in sections {
        section_html(&mut out, section)?;
    }
    let _ = write!(out, "<h2>Settings</h2><pre>{}</pre></body></html>", escape(settings));
    Ok(out)
}
