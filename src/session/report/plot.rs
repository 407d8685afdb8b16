//! The plot of test Dice against the annotation budget (PNG and SVG): each arm's mean with its
//! 95 % band, and the full-data reference as a horizontal line.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::Report;
use crate::session::config::{Arm, SessionConfig};
use crate::session::files::write_atomic_with;

impl Report {
    /// Draws the plot into `png` and `svg`.
    pub(super) fn write_plots(&self, cfg: &SessionConfig, png: &Path, svg: &Path) -> Result<()> {
        register_font();
        let plot = Plot {
            curves: self.series(cfg),
            full: self.full_line(),
            unit: self.unit,
        };
        // Drawn into temporary files of the same extension (the backend picks the format by
        // it) and renamed into place, like every other file the session writes.
        write_atomic_with(png, |tmp| {
            draw(
                BitMapBackend::new(tmp, (900, 560)).into_drawing_area(),
                &plot,
            )
            .with_context(|| format!("cannot draw {}", png.display()))
        })?;
        write_atomic_with(svg, |tmp| {
            draw(SVGBackend::new(tmp, (900, 560)).into_drawing_area(), &plot)
                .with_context(|| format!("cannot draw {}", svg.display()))
        })?;
        Ok(())
    }

    /// Per arm: its points in budget order, each with the 95 % interval over repeats. The
    /// budgets protocol plots each budget's final point; the rounds protocol every round, the
    /// shared start included.
    pub fn series(&self, cfg: &SessionConfig) -> Vec<Curve> {
        let mut out: Vec<Curve> = Vec::new();
        for arm in cfg.experiment.strategies() {
            let mut pts: Vec<CurvePoint> = self
                .summary
                .iter()
                .filter(|r| r.arm == arm && cfg.experiment.protocol.on_curve(r.round))
                .map(|r| CurvePoint {
                    budget: r.annotated as f64,
                    mean: r.dice_mean,
                    band: r.ci95,
                })
                .collect();
            pts.sort_by(|a, b| a.budget.total_cmp(&b.budget));
            out.push((arm, pts));
        }
        out
    }

    /// The full-data reference: its mean and 95 % interval over repeats.
    pub fn full_line(&self) -> Option<FullLine> {
        self.full_data.as_ref().map(|f| FullLine {
            mean: f.mean,
            band: f.ci95,
        })
    }
}

/// A point of an arm's curve: mean test Dice at a budget, and its 95 % interval over repeats
/// (none under two repeats).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    pub budget: f64,
    pub mean: f64,
    pub band: Option<[f64; 2]>,
}

/// One arm's curve, in budget order.
pub type Curve = (Arm, Vec<CurvePoint>);

/// The full-data reference's mean and its 95 % interval over repeats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FullLine {
    pub mean: f64,
    pub band: Option<[f64; 2]>,
}

/// What the plot shows.
struct Plot {
    curves: Vec<Curve>,
    full: Option<FullLine>,
    unit: &'static str,
}

/// The annotation budgets the curves span (a unit range around a single budget).
pub fn budget_range(series: &[Curve]) -> (f64, f64) {
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|q| q.budget));
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

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, plot: &Plot) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    root.fill(&WHITE).map_err(e)?;
    let (x0, x1) = budget_range(&plot.curves);
    let pad = (x1 - x0) * 0.05;
    let (left, right) = (x0 - pad, x1 + pad);
    let mut chart = ChartBuilder::on(&root)
        .caption("Test Dice against annotation budget", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(left..right, 0.0..1.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(format!("annotated {}", plot.unit))
        .y_desc("test Dice, mean and 95 % interval over repeats")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(e)?;
    if let Some(full) = plot.full {
        let c = arm_colour(Arm::Full);
        if let Some([lo, hi]) = full.band {
            let band = vec![(left, hi), (right, hi), (right, lo), (left, lo)];
            chart
                .draw_series(std::iter::once(Polygon::new(band, c.mix(0.12))))
                .map_err(e)?;
        }
        let style = c.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                [(left, full.mean), (right, full.mean)],
                10,
                6,
                style,
            ))
            .map_err(e)?
            .label("full data")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    for (arm, pts) in &plot.curves {
        let c = arm_colour(*arm);
        if pts.is_empty() {
            continue;
        }
        if pts.iter().all(|p| p.band.is_some()) {
            let band_of = |p: &CurvePoint| p.band.unwrap_or([p.mean, p.mean]);
            let mut band: Vec<(f64, f64)> = pts
                .iter()
                .map(|p| (p.budget, band_of(p)[1].min(1.0)))
                .collect();
            band.extend(pts.iter().rev().map(|p| (p.budget, band_of(p)[0].max(0.0))));
            chart
                .draw_series(std::iter::once(Polygon::new(band, c.mix(0.18))))
                .map_err(e)?;
        }
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.budget, p.mean)),
                c.stroke_width(3),
            ))
            .map_err(e)?
            .label(arm.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.budget, p.mean), 4, c.filled())),
            )
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
