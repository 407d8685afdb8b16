//! The plot of test Dice against the annotation budget (PNG and SVG): each arm's mean with its
//! 95 % band, and the full-data reference as a horizontal line.

use std::sync::Once;

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::Report;
use crate::session::files::write_atomic_with;
use crate::session::config::{Arm, Protocol, SessionConfig};

impl Report {
    /// Draws the plot into `png` and `svg`.
    pub(super) fn write_plots(&self, cfg: &SessionConfig, png: &Path, svg: &Path) -> Result<()> {
        register_font();
        let series = self.series(cfg);
        // Drawn into temporary files of the same extension (the backend picks the format by
        // it) and renamed into place, like every other file the session writes.
        write_atomic_with(&png, |tmp| {
            draw(
                BitMapBackend::new(tmp, (900, 560)).into_drawing_area(),
                &series,
                self.unit,
            )
            .with_context(|| format!("cannot draw {}", png.display()))
        })?;
        write_atomic_with(&svg, |tmp| {
            draw(
                SVGBackend::new(tmp, (900, 560)).into_drawing_area(),
                &series,
                self.unit,
            )
            .with_context(|| format!("cannot draw {}", svg.display()))
        })?;
        Ok(())
    }

    /// Per arm: (annotated, mean, sd) points in budget order. The budgets protocol plots each
    /// budget's final point; the rounds protocol every round, the shared start included.
    pub fn series(&self, cfg: &SessionConfig) -> Vec<Curve> {
        let mut out: Vec<Curve> = Vec::new();
        for &arm in &cfg.experiment.arms {
            let mut pts: Vec<(f64, f64, f64)> = self
                .summary
                .iter()
                .filter(|r| {
                    r.arm == arm && (cfg.experiment.protocol == Protocol::Rounds || r.round > 0)
                })
                .map(|r| (r.annotated as f64, r.dice_mean, r.dice_sd))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            out.push((arm, pts));
        }
        out
    }
}

/// One arm's curve: (annotated, mean Dice, sd) points in budget order.
pub type Curve = (Arm, Vec<(f64, f64, f64)>);

/// The annotation budgets the curves span (a unit range around a single budget).
pub fn budget_range(series: &[Curve]) -> (f64, f64) {
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let (x0, x1) = xs.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    if x0 > x1 {
        (0.0, 1.0)
    } else if x0 == x1 {
        (x0 - 1.0, x1 + 1.0)
    } else {
        (x0, x1)
    }
}

/// Okabe–Ito colours, distinguishable with colour-vision deficiency.
pub fn arm_colour(arm: Arm) -> RGBColor {
    match arm {
        Arm::Random => RGBColor(230, 159, 0),
        Arm::Proposed => RGBColor(0, 114, 178),
        Arm::Oracle => RGBColor(0, 158, 115),
        Arm::Entropy => RGBColor(213, 94, 0),
        Arm::Coreset => RGBColor(204, 121, 167),
        Arm::Full => RGBColor(90, 90, 90),
    }
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    series: &[Curve],
    unit: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(e)?;
    let (x0, x1) = budget_range(series);
    let pad = (x1 - x0) * 0.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("Test Dice against annotation budget", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), 0.0..1.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(format!("annotated {unit}"))
        .y_desc("test Dice, mean ± sd")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    for (arm, pts) in series {
        let c = arm_colour(*arm);
        if pts.is_empty() {
            continue;
        }
        let mut band: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, (p.1 + p.2).min(1.0))).collect();
        band.extend(pts.iter().rev().map(|p| (p.0, (p.1 - p.2).max(0.0))));
        chart
            .draw_series(std::iter::once(Polygon::new(band, c.mix(0.18))))
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0, p.1)),
                c.stroke_width(3),
            ))
            .map_err(e)?
            .label(arm.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 4, c.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 16))
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
