//! The dashboard's statistics: the header's line (the selected arm against random at the
//! largest budget so far) and the comparison view (`c`): the paired table by budget, the area
//! under the curve, the full-data headline and the VAE's latent space, updated as results come.

use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};
use ratatui::Frame;

use super::app::Dashboard;
use super::theme::Theme;
use super::ui::{block, centred};
use crate::session::config::Arm;
use crate::session::report::paired_text;

/// `proposed − random at 8: +0.031 [−0.004, +0.066], p = 0.080 (n = 8)`, or what is missing.
pub fn header_line(app: &Dashboard, t: &Theme) -> Line<'static> {
    let dim = Style::default().fg(t.dim);
    let Some(arm) = app.compared_arm() else {
        return Line::from(Span::styled(" one arm: nothing to compare", dim));
    };
    let Some(c) = app.headline() else {
        return Line::from(Span::styled(
            format!(" {arm} − random: after the first round"),
            dim,
        ));
    };
    Line::from(vec![
        Span::styled(
            format!(" {arm} − random at {}: ", c.budget),
            Style::default().fg(t.arm(arm)),
        ),
        Span::styled(
            format!("{} (n = {})", paired_text(&c.paired), c.paired.n),
            Style::default().fg(t.text),
        ),
    ])
}

/// The comparison view's lines for the compared arm.
fn lines(app: &Dashboard, t: &Theme, arm: Arm) -> Vec<Line<'static>> {
    let (text, dim, head) = (
        Style::default().fg(t.text),
        Style::default().fg(t.dim),
        Style::default()
            .fg(t.highlight)
            .add_modifier(Modifier::BOLD),
    );
    let report = &app.report;
    let mut out = vec![Line::from(Span::styled(
        format!(
            "{:>7}  {:>7}  {:<18} {:>6}  {:>7}  {:>6}",
            "budget", "diff", "95 % interval", "p", "W/T/L", "MDD"
        ),
        head,
    ))];
    let row = |label: String, p: &crate::stats::Paired| {
        let ci = p
            .ci95
            .map(|[lo, hi]| format!("[{lo:+.3}, {hi:+.3}]"))
            .unwrap_or_else(|| "—".into());
        let pv = p.p_wilcoxon.map_or("—".into(), |v| format!("{v:.3}"));
        let mdd = p.mdd80.map_or("—".into(), |v| format!("{v:.3}"));
        Line::from(Span::styled(
            format!(
                "{label:>7}  {:>+7.3}  {ci:<18} {pv:>6}  {:>7}  {mdd:>6}",
                p.mean_diff,
                format!("{}/{}/{}", p.wins, p.ties, p.losses)
            ),
            text,
        ))
    };
    let mine: Vec<_> = report
        .comparisons
        .iter()
        .filter(|c| c.arm == arm && c.versus == Arm::Random)
        .collect();
    if mine.is_empty() {
        out.push(Line::from(Span::styled(
            "no round is done in any repeat yet",
            dim,
        )));
    }
    // The latest budgets when there are more than fit.
    for c in mine.iter().skip(mine.len().saturating_sub(8)) {
        out.push(row(c.budget.to_string(), &c.paired));
    }
    if let Some(a) = report.aubc.iter().find(|a| a.arm == arm) {
        if let Some(p) = &a.paired {
            out.push(row("AUBC".into(), p));
        }
    }
    out.push(Line::from(""));
    out.push(match &report.full_data {
        Some(f) => {
            let reached = match report.budget_to_full.get(&arm) {
                Some(Some(b)) => format!(
                    "{arm} within {} at {} ({:.0} % of the pool; 95 % {})",
                    report.delta,
                    b.budget,
                    100.0 * b.fraction,
                    b.interval_text()
                ),
                _ => format!("{arm} not within {} yet", report.delta),
            };
            Line::from(vec![
                Span::styled(
                    format!(
                        "full data {:.3} ± {:.3} (n = {}): ",
                        f.mean, f.sd, f.repeats
                    ),
                    Style::default().fg(t.full),
                ),
                Span::styled(reached, text),
            ])
        }
        None => Line::from(Span::styled(
            "no full-data reference (add \"full\" to experiment.arms)",
            dim,
        )),
    });
    // The VAE's latent space of the last three repeats that have one, two lines each.
    for (repeat, m) in app.manifold.iter().rev().take(3).rev() {
        let kl: Vec<String> = m.kl_per_dim.iter().map(|k| format!("{k:.2}")).collect();
        out.push(Line::from(Span::styled(
            format!(
                "repeat {}: VAE MSE {:.4}, mean image {:.4}: {:.0} % of the variance explained",
                repeat + 1,
                m.recon_mse,
                m.mean_image_mse,
                100.0 * m.variance_explained
            ),
            dim,
        )));
        out.push(Line::from(Span::styled(
            format!(
                "  KL per dimension {} nats; {} of {} active",
                kl.join(" "),
                m.active_dims,
                m.kl_per_dim.len()
            ),
            dim,
        )));
    }
    for (repeat, warning) in app.weak_manifolds() {
        out.push(Line::from(Span::styled(
            format!("repeat {}: warning: {warning}", repeat + 1),
            Style::default().fg(t.error),
        )));
    }
    out
}

/// The comparison view over the dashboard.
pub fn view(f: &mut Frame, area: Rect, app: &Dashboard, t: &Theme) {
    let Some(arm) = app.compared_arm() else {
        return;
    };
    let lines = lines(app, t, arm);
    let r = centred(area, 80, lines.len() as u16 + 2);
    let title = format!("{arm} − random, paired by repeat · tab arm · c close");
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(lines).block(block(&title, t)), r);
}
