//! `--svg FILE`: the side-by-side figures as a horizontal bar chart, written as plain SVG (no
//! fonts, scripts or anything fetched: it renders the same on GitHub, in a browser and in an
//! image viewer).
//!
//! Each bar is one scenario's millstream figure over its baseline's in the same run (the tokio
//! channel for the in-memory scenarios, the raw client for a backend), with both figures written
//! beside it; a line marks 1.0 (as fast as the baseline) and a dashed one the 0.9 target.

use std::fmt::Write as _;

/// One bar.
pub(crate) struct Bar {
    /// The scenario's name, left of the bar.
    pub(crate) label: String,
    /// millstream over the baseline.
    pub(crate) ratio: f64,
    /// Right of the bar (the two figures).
    pub(crate) detail: String,
    /// The group the bar belongs to (a backend, or "in memory"); a new group gets a heading.
    pub(crate) group: String,
}

const LABEL_WIDTH: f64 = 190.0;
const PLOT_WIDTH: f64 = 420.0;
const DETAIL_WIDTH: f64 = 300.0;
const ROW: f64 = 22.0;
const HEADING: f64 = 26.0;

/// The chart, as an SVG document; `title` goes above it.
pub(crate) fn svg(title: &str, bars: &[Bar]) -> String {
    let max_ratio = bars.iter().map(|b| b.ratio).filter(|r| r.is_finite()).fold(1.2_f64, f64::max);
    let scale = PLOT_WIDTH / (max_ratio * 1.05);
    let groups = {
        let mut groups: Vec<&str> = bars.iter().map(|b| b.group.as_str()).collect();
        groups.dedup();
        groups.len()
    };
    let top = 40.0;
    let height = top + groups as f64 * HEADING + bars.len() as f64 * ROW + 36.0;
    let width = LABEL_WIDTH + PLOT_WIDTH + DETAIL_WIDTH;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ =
        writeln!(out, r#"<text x="10" y="22" font-size="14" font-weight="bold">{}</text>"#, escape(title));
    // The reference lines go first, under the bars and their labels (drawn later, on top).
    let bottom = top + groups as f64 * HEADING + bars.len() as f64 * ROW;
    for (ratio, dash, label) in [(1.0, "", "1.0 = baseline"), (0.9, r#" stroke-dasharray="4 3""#, "0.9")] {
        let x = LABEL_WIDTH + ratio * scale;
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#444"{dash}/>"##
        );
        let anchor = if ratio < 1.0 { "end" } else { "start" };
        let _ = writeln!(
            out,
            r##"<text x="{x:.1}" y="{}" text-anchor="{anchor}" fill="#444">{label}</text>"##,
            bottom + 16.0
        );
    }
    let mut y = top;
    let mut group = None;
    for bar in bars {
        if group != Some(bar.group.as_str()) {
            group = Some(bar.group.as_str());
            let _ = writeln!(
                out,
                r#"<text x="10" y="{}" font-weight="bold">{}</text>"#,
                y + HEADING - 8.0,
                escape(&bar.group)
            );
            y += HEADING;
        }
        let length = if bar.ratio.is_finite() { (bar.ratio * scale).max(1.0) } else { 0.0 };
        let colour = if bar.ratio >= 0.9 { "#3b7dd8" } else { "#d8843b" };
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL_WIDTH - 8.0,
            y + 15.0,
            escape(&bar.label)
        );
        let _ = writeln!(
            out,
            r#"<rect x="{LABEL_WIDTH}" y="{}" width="{length:.1}" height="{}" fill="{colour}"/>"#,
            y + 4.0,
            ROW - 6.0
        );
        let _ = writeln!(
            out,
            // (A white halo keeps the figures readable where a reference line crosses them.)
            r#"<text x="{:.1}" y="{}" stroke="white" stroke-width="3" paint-order="stroke">{:.2} ×  {}</text>"#,
            LABEL_WIDTH + length + 6.0,
            y + 15.0,
            bar.ratio,
            escape(&bar.detail)
        );
        y += ROW;
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
