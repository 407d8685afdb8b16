//! How a site's scanners and protocols turn tissue into numbers. Two sites that differ in
//! intensity scale, noise, bias field, contrast and sharpness make a model trained on one lose
//! accuracy on the other: the domain shift of the transfer scenario.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Acquisition {
    /// Intensity of tissue value 1.0 in the stored int16.
    pub scale: f32,
    /// Rician noise, relative to `scale`.
    pub noise: f32,
    /// Amplitude of the multiplicative low-frequency bias field.
    pub bias: f32,
    /// Contrast curve per modality (flair, t1, t1ce, t2): value^gamma.
    pub gamma: [f32; 4],
    /// In-plane blur (lower effective resolution).
    pub blur: bool,
    /// How far lesions stand out from the tissue around them (protocol-dependent, e.g. FLAIR's
    /// inversion time): 1 = full contrast.
    pub lesion_contrast: f32,
}

impl Acquisition {
    pub fn for_site(site: &str) -> Acquisition {
        match site {
            "CBICA" => Acquisition {
                scale: 1000.0,
                noise: 0.025,
                bias: 0.08,
                gamma: [1.0; 4],
                blur: false,
                lesion_contrast: 1.0,
            },
            "TCIA" => Acquisition {
                scale: 420.0,
                noise: 0.07,
                bias: 0.30,
                gamma: [0.7, 1.3, 0.8, 0.75],
                blur: true,
                lesion_contrast: 0.7,
            },
            other => {
                // Any other site gets its own fixed protocol, derived from its name.
                let h = xxhash_rust::xxh3::xxh3_64(other.as_bytes());
                let u = |k: u32| ((h >> (k * 8)) & 0xff) as f32 / 255.0;
                Acquisition {
                    scale: 300.0 + 900.0 * u(0),
                    noise: 0.02 + 0.06 * u(1),
                    bias: 0.05 + 0.25 * u(2),
                    gamma: [
                        0.7 + 0.6 * u(3),
                        0.7 + 0.6 * u(4),
                        0.7 + 0.6 * u(5),
                        0.7 + 0.6 * u(6),
                    ],
                    blur: u(7) > 0.5,
                    lesion_contrast: 0.6 + 0.4 * ((h >> 60) as f32 / 15.0),
                }
            }
        }
    }
}
