//! Small line plots as inline SVG, so a report needs no script, font or file beside it.
use std::fmt::Write;

const WIDTH: f64 = 360.0;
const HEIGHT: f64 = 200.0;
const MARGIN: f64 = 40.0;
const COLOURS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

/// A plot of several series over the same x (0, 1, ...), on a log scale in y (alignment losses span orders of
/// magnitude). Non-positive or non-finite values are left out. Returns an <svg> element.
pub fn log_line_plot(title: &str, x_label: &str, series: &[(String, Vec<f64>)]) -> String {
    let points: Vec<f64> = series.iter().flat_map(|(_, ys)| ys.iter().copied()).filter(|y| y.is_finite() && *y > 0.0).collect();
    let longest = series.iter().map(|(_, ys)| ys.len()).max().unwrap_or(0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"><title>{}</title>"#,
        escape(title)
    );
    let _ = write!(svg, r#"<text x="{}" y="14" font-size="12" text-anchor="middle">{}</text>"#, WIDTH / 2.0, escape(title));
    let (plot_w, plot_h) = (WIDTH - 2.0 * MARGIN, HEIGHT - 2.0 * MARGIN);
    let _ = write!(svg, r##"<rect x="{MARGIN}" y="{MARGIN}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##);
    let _ = write!(svg, r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>"#, WIDTH / 2.0, HEIGHT - 8.0, escape(x_label));
    if points.is_empty() || longest == 0 {
        svg.push_str("</svg>");
        return svg;
    }
    let (lo, hi) = points.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| (lo.min(y.log10()), hi.max(y.log10())));
    let (lo, hi) = if hi - lo < 1e-9 { (lo - 0.5, hi + 0.5) } else { (lo, hi) };
    let x_at = |i: usize| MARGIN + if longest > 1 { i as f64 * plot_w / (longest - 1) as f64 } else { plot_w / 2.0 };
    let y_at = |y: f64| MARGIN + plot_h * (hi - y.log10()) / (hi - lo);
    let _ = write!(svg, r#"<text x="{}" y="{}" font-size="10" text-anchor="end">{:.2e}</text>"#, MARGIN - 2.0, MARGIN + 4.0, 10f64.powf(hi));
    let _ = write!(svg, r#"<text x="{}" y="{}" font-size="10" text-anchor="end">{:.2e}</text>"#, MARGIN - 2.0, MARGIN + plot_h, 10f64.powf(lo));
    for (k, (name, ys)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let path: Vec<String> =
            ys.iter().enumerate().filter(|(_, y)| y.is_finite() && **y > 0.0).map(|(i, y)| format!("{:.1},{:.1}", x_at(i), y_at(*y))).collect();
        let _ = write!(svg, r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#, path.join(" "), escape(name));
        let _ = write!(svg, r#"<text x="{}" y="{}" font-size="9" fill="{colour}">{}</text>"#, WIDTH - MARGIN + 3.0, MARGIN + 10.0 + 11.0 * k as f64, escape(name));
    }
    svg.push_str("</svg>");
    svg
}

/// Several series of (x, y) points joined in x order, both axes on a log scale (costs and distances span orders of
/// magnitude), each point marked. Points with a non-positive or non-finite coordinate are left out. An <svg>.
pub fn log_log_plot(title: &str, x_label: &str, y_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let drawable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && x > 0.0 && y > 0.0;
    let points: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).filter(drawable).collect();
    let (width, height, right) = (WIDTH + 120.0, HEIGHT + 40.0, 130.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"><title>{}</title>"#,
        escape(title)
    );
    let _ = write!(svg, r#"<text x="{}" y="14" font-size="12" text-anchor="middle">{}</text>"#, (width - right) / 2.0 + MARGIN / 2.0, escape(title));
    let (plot_w, plot_h) = (width - MARGIN - right, height - 2.0 * MARGIN);
    let _ = write!(svg, r##"<rect x="{MARGIN}" y="{MARGIN}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##);
    let _ = write!(svg, r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>"#, MARGIN + plot_w / 2.0, height - 8.0, escape(x_label));
    let _ = write!(svg, r#"<text x="10" y="{0}" font-size="10" text-anchor="middle" transform="rotate(-90 10 {0})">{1}</text>"#, MARGIN + plot_h / 2.0, escape(y_label));
    if points.is_empty() {
        svg.push_str("</svg>");
        return svg;
    }
    let range = |values: Vec<f64>| {
        let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v.log10()), hi.max(v.log10())));
        if hi - lo < 1e-9 { (lo - 0.5, hi + 0.5) } else { (lo, hi) }
    };
    let (x_lo, x_hi) = range(points.iter().map(|p| p.0).collect());
    let (y_lo, y_hi) = range(points.iter().map(|p| p.1).collect());
    let x_at = |x: f64| MARGIN + plot_w * (x.log10() - x_lo) / (x_hi - x_lo);
    let y_at = |y: f64| MARGIN + plot_h * (y_hi - y.log10()) / (y_hi - y_lo);
    let _ = write!(svg, r#"<text x="{}" y="{}" font-size="10" text-anchor="end">{:.2e}</text>"#, MARGIN - 2.0, MARGIN + 4.0, 10f64.powf(y_hi));
    let _ = write!(svg, r#"<text x="{}" y="{}" font-size="10" text-anchor="end">{:.2e}</text>"#, MARGIN - 2.0, MARGIN + plot_h, 10f64.powf(y_lo));
    let _ = write!(svg, r#"<text x="{MARGIN}" y="{}" font-size="10" text-anchor="start">{:.3e}</text>"#, MARGIN + plot_h + 12.0, 10f64.powf(x_lo));
    let _ = write!(svg, r#"<text x="{}" y="{}" font-size="10" text-anchor="end">{:.3e}</text>"#, MARGIN + plot_w, MARGIN + plot_h + 12.0, 10f64.powf(x_hi));
    for (k, (name, series_points)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let mut drawn: Vec<(f64, f64)> = series_points.iter().copied().filter(drawable).collect();
        drawn.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = drawn.iter().map(|&(x, y)| format!("{:.1},{:.1}", x_at(x), y_at(y))).collect();
        let _ = write!(svg, r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"><title>{}</title></polyline>"#, path.join(" "), escape(name));
        for &(x, y) in &drawn {
            let _ = write!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"><title>{}: {x:.4e}, {y:.4e}</title></circle>"#, x_at(x), y_at(y), escape(name));
        }
        let _ = write!(svg, r#"<text x="{}" y="{}" font-size="9" fill="{colour}">{}</text>"#, width - right + 5.0, MARGIN + 10.0 + 11.0 * k as f64, escape(name));
    }
    svg.push_str("</svg>");
    svg
}

/// Text made safe inside HTML or SVG elements and attribute values.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_becomes_a_line_through_its_points() {
        let svg = log_line_plot("loss <per step>", "step", &[("seed 0".into(), vec![1.0, 0.1, 0.01]), ("seed 1".into(), vec![2.0, 0.0, 0.02])]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("loss &lt;per step&gt;"), "the title is escaped");
        // Seed 1's zero cannot be drawn on a log scale: two points, not three.
        let second = svg.split("<polyline").nth(2).unwrap();
        let points = second.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(points.split(' ').count(), 2, "{points}");
    }

    #[test]
    fn a_log_log_plot_joins_each_series_in_x_order_and_drops_what_a_log_cannot_show() {
        let svg = log_log_plot("c", "passes", "consistency", &[("a".into(), vec![(100.0, 0.1), (10.0, 0.5), (0.0, 0.2)]), ("b".into(), vec![(50.0, 0.01)])]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 3, "x = 0 has no place on a log axis");
        let first = svg.split("<polyline").nth(1).unwrap();
        let points: Vec<f64> = first.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split(' ').map(|p| p.split(',').next().unwrap().parse().unwrap()).collect();
        assert!(points.len() == 2 && points[0] < points[1], "joined from the cheaper point: {points:?}");
    }
}
