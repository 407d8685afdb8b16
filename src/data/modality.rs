use std::fmt;

use serde::{Deserialize, Serialize};

use super::DataError;

/// One MRI sequence of a BraTS case; the order here is the channel order of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    #[serde(alias = "t2f")]
    Flair,
    #[serde(alias = "t1n")]
    T1,
    #[serde(alias = "t1c")]
    T1ce,
    #[serde(alias = "t2w")]
    T2,
}

impl Modality {
    pub const ALL: [Modality; 4] = [Modality::Flair, Modality::T1, Modality::T1ce, Modality::T2];

    /// The file-name suffix BraTS uses: `<ID>_<suffix>.nii.gz`.
    pub fn suffix(self) -> &'static str {
        match self {
            Modality::Flair => "flair",
            Modality::T1 => "t1",
            Modality::T1ce => "t1ce",
            Modality::T2 => "t2",
        }
    }

    /// The BraTS 2023 file-name suffix: `<ID>-<suffix>.nii.gz`.
    pub fn suffix_2023(self) -> &'static str {
        match self {
            Modality::Flair => "t2f",
            Modality::T1 => "t1n",
            Modality::T1ce => "t1c",
            Modality::T2 => "t2w",
        }
    }

    /// Any spelling a data set uses: BraTS 2019-2021 (`t1ce`), BraTS 2023 (`t1c`), and the
    /// Medical Segmentation Decathlon's `dataset.json` (`T1w`, `t1gd`, `T2w`, `FLAIR`).
    pub fn parse(s: &str) -> Option<Modality> {
        match s.trim().to_ascii_lowercase().as_str() {
            "flair" | "t2f" | "t2-flair" => Some(Modality::Flair),
            "t1" | "t1n" | "t1w" => Some(Modality::T1),
            "t1ce" | "t1c" | "t1gd" | "t1-gd" | "t1w-ce" => Some(Modality::T1ce),
            "t2" | "t2w" => Some(Modality::T2),
            _ => None,
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

/// Parses `flair,t1,t1ce,t2` (any order, no repeats) into the canonical channel order given.
pub fn parse_modalities(list: &str) -> Result<Vec<Modality>, DataError> {
    let mut out = Vec::new();
    for part in list.split(',').filter(|p| !p.trim().is_empty()) {
        let m = Modality::parse(part).ok_or_else(|| {
            DataError::Config(format!(
                "unknown modality '{}' (expected some of flair,t1,t1ce,t2, or t2f,t1n,t1c,t2w)",
                part.trim()
            ))
        })?;
        if out.contains(&m) {
            return Err(DataError::Config(format!("modality '{m}' given twice")));
        }
        out.push(m);
    }
    if out.is_empty() {
        return Err(DataError::Config("no modality given".into()));
    }
    Ok(out)
}
