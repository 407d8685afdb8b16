//! What `suggestive dataset` prints: a summary of a loaded data set, as text or JSON.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::{
    Dataset, LayoutKind, LoadReport, Modality, Preprocessing, Segmentations, SkippedPatient,
};

#[derive(Debug, Clone, Serialize)]
pub struct TumourStats {
    /// Whole-tumour volume per patient, millilitres.
    pub median_ml: f64,
    pub mean_ml: f64,
    pub min_ml: f64,
    pub max_ml: f64,
    /// Kept slices that contain tumour, over all kept slices.
    pub slices_with_tumour: usize,
    pub slices_with_tumour_fraction: f64,
    /// Share of tumour voxels by label: necrotic/non-enhancing core (1), edema (2), enhancing (4).
    pub label_fraction: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CacheSummary {
    #[serde(flatten)]
    pub report: LoadReport,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub root: String,
    /// Which release's layout the folder has.
    pub layout: LayoutKind,
    pub patients: usize,
    /// Cases without a segmentation (the Decathlon's `imagesTs/`): counted here; only a session
    /// labelled by people loads them.
    pub unlabelled: usize,
    /// Cases whose segmentation was found under an unusual name: `case: file name`.
    pub odd_names: Vec<String>,
    /// The sites file the sites came from, if any.
    pub sites_file: Option<String>,
    pub sites: BTreeMap<String, usize>,
    pub grades: BTreeMap<String, usize>,
    pub modalities: Vec<Modality>,
    pub slices: usize,
    /// One slice: channels, rows, columns.
    pub slice_shape: [usize; 3],
    /// Original volume shapes `XxYxZ` → patients.
    pub volume_shapes: BTreeMap<String, usize>,
    /// Loaded cases that have a segmentation file (read or not).
    pub with_segmentation: usize,
    /// `None`: the load read no segmentation (`dataset --images-only`).
    pub tumour: Option<TumourStats>,
    pub preprocessing: Preprocessing,
    pub cache: CacheSummary,
    pub skipped: Vec<SkippedPatient>,
}

impl Summary {
    /// `sites_file`: where the sites came from, when a sites file gave them.
    pub fn new(ds: &Dataset, report: &LoadReport, sites_file: Option<&std::path::Path>) -> Summary {
        let patients = ds.patients();
        let mut sites = BTreeMap::new();
        let mut grades = BTreeMap::new();
        let mut shapes = BTreeMap::new();
        for p in patients {
            *sites.entry(p.site.clone()).or_insert(0) += 1;
            *grades
                .entry(p.grade.clone().unwrap_or_else(|| "unknown".into()))
                .or_insert(0) += 1;
            let [x, y, z] = p.dims;
            *shapes.entry(format!("{x}x{y}x{z}")).or_insert(0) += 1;
        }
        let mut ml: Vec<f64> = patients.iter().map(|p| p.tumour_ml()).collect();
        ml.sort_by(f64::total_cmp);
        let n = ml.len().max(1) as f64;
        let median = if ml.is_empty() {
            0.0
        } else if ml.len() % 2 == 1 {
            ml[ml.len() / 2]
        } else {
            (ml[ml.len() / 2 - 1] + ml[ml.len() / 2]) / 2.0
        };
        let mut labels = [0u64; 3];
        for p in patients {
            for (l, v) in labels.iter_mut().zip(p.stats.label_voxels) {
                *l += v;
            }
        }
        let total: u64 = labels.iter().sum::<u64>().max(1);
        let label_fraction = ["necrotic_core", "edema", "enhancing"]
            .iter()
            .zip(labels)
            .map(|(name, v)| (name.to_string(), v as f64 / total as f64))
            .collect();
        let tumour_slices: usize = patients.iter().map(|p| p.stats.tumour_slices).sum();
        let layout = ds.layout();
        let odd_names = layout
            .patients
            .iter()
            .filter(|p| p.odd_seg_name)
            .filter_map(|p| {
                let file = p.seg.as_ref()?.file_name()?.to_string_lossy().into_owned();
                Some(format!("{}: {file}", p.id))
            })
            .collect();
        Summary {
            root: ds.root().display().to_string(),
            layout: layout.kind,
            patients: patients.len(),
            unlabelled: layout.unlabelled.len(),
            odd_names,
            sites_file: sites_file.map(|f| f.display().to_string()),
            sites,
            grades,
            modalities: ds.preprocessing().modalities.clone(),
            slices: ds.num_slices(),
            slice_shape: [ds.channels(), ds.size(), ds.size()],
            volume_shapes: shapes,
            with_segmentation: (0..patients.len())
                .filter(|&p| ds.has_segmentation(p))
                .count(),
            tumour: (ds.segmentations() == Segmentations::Read).then(|| TumourStats {
                median_ml: median,
                mean_ml: ml.iter().sum::<f64>() / n,
                min_ml: ml.first().copied().unwrap_or(0.0),
                max_ml: ml.last().copied().unwrap_or(0.0),
                slices_with_tumour: tumour_slices,
                slices_with_tumour_fraction: tumour_slices as f64 / ds.num_slices().max(1) as f64,
                label_fraction,
            }),
            preprocessing: ds.preprocessing().clone(),
            cache: CacheSummary {
                report: report.clone(),
                bytes: ds.cache_bytes(),
            },
            skipped: ds.skipped().to_vec(),
        }
    }

    pub fn to_text(&self) -> String {
        let counts = |m: &BTreeMap<String, usize>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(" · ")
        };
        let mods: Vec<String> = self.modalities.iter().map(|m| m.to_string()).collect();
        let mut s = String::new();
        let _ = writeln!(
            s,
            "dataset   {} ({})\n          {} patients, {} slices",
            self.root,
            self.layout.describe(),
            self.patients,
            self.slices
        );
        if self.unlabelled > 0 {
            let _ = writeln!(
                s,
                "          unlabelled: {} (no segmentation; annotated in a session labelled by people)",
                self.unlabelled
            );
        }
        for odd in &self.odd_names {
            let _ = writeln!(s, "          segmentation under an unusual name, {odd}");
        }
        let from = match &self.sites_file {
            Some(f) => format!("  (from {f})"),
            None => String::new(),
        };
        let _ = writeln!(s, "sites     {}{from}", counts(&self.sites));
        let _ = writeln!(s, "grades    {}", counts(&self.grades));
        let [c, h, w] = self.slice_shape;
        let shapes: Vec<String> = self
            .volume_shapes
            .iter()
            .map(|(k, v)| format!("{k} ({v})"))
            .collect();
        let _ = writeln!(
            s,
            "shape     {} → {c} × {h} × {w} per slice ({})",
            shapes.join(", "),
            mods.join(",")
        );
        let p = &self.preprocessing;
        let _ = writeln!(
            s,
            "prep      z-score {}, slices {}+{} dropped, down-sampling ×{}",
            if p.zscore { "on" } else { "off" },
            p.drop_first,
            p.drop_last,
            p.downsample
        );
        match &self.tumour {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "tumour    whole tumour {:.1} ml median ({:.1}–{:.1}), {:.0}% of slices contain tumour",
                    t.median_ml,
                    t.min_ml,
                    t.max_ml,
                    100.0 * t.slices_with_tumour_fraction
                );
                let lf: Vec<String> = t
                    .label_fraction
                    .iter()
                    .map(|(k, v)| format!("{k} {:.0}%", 100.0 * v))
                    .collect();
                let _ = writeln!(s, "          {}", lf.join(" · "));
            }
            None => {
                let _ = writeln!(
                    s,
                    "tumour    not read (--images-only); {} of {} cases have a segmentation file",
                    self.with_segmentation, self.patients
                );
            }
        }
        let status = match &self.cache.report.status {
            super::CacheStatus::Hit => "hit".to_string(),
            super::CacheStatus::Built => "built".to_string(),
            super::CacheStatus::Rebuilt(r) => format!("rebuilt ({r})"),
        };
        let _ = writeln!(
            s,
            "cache     {status}, {:.2} s, {:.1} MB at {}",
            self.cache.report.seconds,
            self.cache.bytes as f64 / 1e6,
            self.cache.report.cache_dir.display()
        );
        if !self.skipped.is_empty() {
            let _ = writeln!(s, "skipped   {} patients:", self.skipped.len());
            for k in &self.skipped {
                let _ = writeln!(s, "          {}", k.reason);
            }
        }
        s
    }
}
