//! Themes: TOML files of colours. Built in: the `themes/` folder (embedded); user themes: the
//! config folder's `themes/NAME.toml`. A broken theme falls back to the default with a message.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use ratatui::style::Color;
use serde::Deserialize;

use crate::session::config::Arm;

pub const BUILTIN: [(&str, &str); 4] = [
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    (
        "high-contrast",
        include_str!("../../themes/high-contrast.toml"),
    ),
    ("colorblind", include_str!("../../themes/colorblind.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: String,
    text: String,
    dim: String,
    border: String,
    accent: String,
    highlight: String,
    error: String,
    gauge: String,
    pool: String,
    labelled: String,
    random: String,
    proposed: String,
    oracle: String,
    /// Optional, for themes written before these arms existed.
    entropy: Option<String>,
    coreset: Option<String>,
    /// The `full` reference's line.
    full: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Theme {
    pub name: String,
    pub text: Color,
    pub dim: Color,
    pub border: Color,
    pub accent: Color,
    pub highlight: Color,
    pub error: Color,
    pub gauge: Color,
    pub pool: Color,
    pub labelled: Color,
    pub random: Color,
    pub proposed: Color,
    pub oracle: Color,
    pub entropy: Color,
    pub coreset: Color,
    pub full: Color,
}

impl Theme {
    pub fn arm(&self, arm: Arm) -> Color {
        match arm {
            Arm::Random => self.random,
            Arm::Proposed => self.proposed,
            Arm::Oracle => self.oracle,
            Arm::Entropy => self.entropy,
            Arm::Coreset => self.coreset,
            Arm::Full => self.full,
        }
    }

    pub fn parse(text: &str, origin: &str, truecolor: bool) -> Result<Theme> {
        let f: ThemeFile = toml::from_str(text).with_context(|| format!("theme {origin}"))?;
        let c = |field: &str, v: &str| {
            parse_colour(v, truecolor).with_context(|| format!("theme {origin}: {field} = \"{v}\""))
        };
        Ok(Theme {
            name: f.name.clone(),
            text: c("text", &f.text)?,
            dim: c("dim", &f.dim)?,
            border: c("border", &f.border)?,
            accent: c("accent", &f.accent)?,
            highlight: c("highlight", &f.highlight)?,
            error: c("error", &f.error)?,
            gauge: c("gauge", &f.gauge)?,
            pool: c("pool", &f.pool)?,
            labelled: c("labelled", &f.labelled)?,
            random: c("random", &f.random)?,
            proposed: c("proposed", &f.proposed)?,
            oracle: c("oracle", &f.oracle)?,
            // Okabe–Ito vermillion where a theme names none.
            entropy: c("entropy", f.entropy.as_deref().unwrap_or("#d55e00"))?,
            // Okabe–Ito reddish purple, and a mid grey for the reference line.
            coreset: c("coreset", f.coreset.as_deref().unwrap_or("#cc79a7"))?,
            full: c("full", f.full.as_deref().unwrap_or("#a8a8a8"))?,
        })
    }

    pub fn default_theme(truecolor: bool) -> Theme {
        Theme::parse(BUILTIN[0].1, "dark", truecolor).expect("built-in theme parses")
    }

    /// Loads `name`: a user theme in the config folder first, then the built-in ones. On error
    /// returns the default theme and the message to show.
    pub fn load(name: &str, truecolor: bool) -> (Theme, Option<String>) {
        match Theme::find(name, truecolor) {
            Ok(t) => (t, None),
            Err(e) => (
                Theme::default_theme(truecolor),
                Some(format!("{e:#}; using the default theme")),
            ),
        }
    }

    fn find(name: &str, truecolor: bool) -> Result<Theme> {
        let user = user_theme_dir().map(|d| d.join(format!("{name}.toml")));
        if let Some(p) = user.filter(|p| p.is_file()) {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            return Theme::parse(&text, &p.display().to_string(), truecolor);
        }
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name) {
            return Theme::parse(text, name, truecolor);
        }
        let p = PathBuf::from(name);
        if p.is_file() {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            return Theme::parse(&text, &p.display().to_string(), truecolor);
        }
        bail!("no theme '{name}' (built in: dark, light, high-contrast, colorblind)")
    }
}

/// `~/.config/suggestive/themes` (or `$SUGGESTIVE_CONFIG_DIR/themes`).
pub fn user_theme_dir() -> Option<PathBuf> {
    Some(crate::paths::config_dir().join("themes"))
}

/// `#rrggbb` → a truecolor, or the nearest of the 256-colour palette's 6×6×6 cube and grey ramp.
pub fn parse_colour(s: &str, truecolor: bool) -> Result<Color> {
    let hex = s
        .trim()
        .strip_prefix('#')
        .with_context(|| "colours are #rrggbb")?;
    if hex.len() != 6 {
        bail!("colours are #rrggbb");
    }
    let v = u32::from_str_radix(hex, 16).with_context(|| "colours are #rrggbb")?;
    let (r, g, b) = ((v >> 16) as u8, (v >> 8) as u8, v as u8);
    if truecolor {
        return Ok(Color::Rgb(r, g, b));
    }
    Ok(Color::Indexed(nearest_256(r, g, b)))
}

fn nearest_256(r: u8, g: u8, b: u8) -> u8 {
    const LEVELS: [u8; 6] = [0, 95, 135, 175, 215, 255];
    let idx = |v: u8| {
        LEVELS
            .iter()
            .enumerate()
            .min_by_key(|(_, &l)| (l as i32 - v as i32).abs())
            .map(|(i, _)| i)
            .unwrap_or(0)
    };
    let (ri, gi, bi) = (idx(r), idx(g), idx(b));
    let cube = 16 + 36 * ri + 6 * gi + bi;
    let d_cube = sq(LEVELS[ri], r) + sq(LEVELS[gi], g) + sq(LEVELS[bi], b);
    let grey_level = ((r as u32 + g as u32 + b as u32) / 3) as u8;
    // The grey ramp runs 8, 18, …, 238: the nearest step.
    let gi2 = ((grey_level as i32 - 8 + 5) / 10).clamp(0, 23) as u8;
    let gv = 8 + 10 * gi2;
    let d_grey = sq(gv, r) + sq(gv, g) + sq(gv, b);
    if d_grey < d_cube {
        232 + gi2
    } else {
        cube as u8
    }
}

fn sq(a: u8, b: u8) -> u32 {
    let d = a as i32 - b as i32;
    (d * d) as u32
}

/// Whether the terminal says it does 24-bit colour.
pub fn truecolor_terminal() -> bool {
    std::env::var("COLORTERM")
        .map(|v| v == "truecolor" || v == "24bit")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_themes_parse_in_both_colour_modes() {
        for (name, text) in BUILTIN {
            for tc in [true, false] {
                let t = Theme::parse(text, name, tc).unwrap();
                assert_eq!(t.name, name);
                // Every arm its own colour, in 256 colours too.
                let arms = [t.random, t.proposed, t.oracle, t.entropy, t.coreset, t.full];
                for (i, a) in arms.iter().enumerate() {
                    assert!(!arms[i + 1..].contains(a), "{name} ({tc}): {arms:?}");
                }
            }
        }
    }

    #[test]
    fn colours_map_to_the_256_palette() {
        assert_eq!(parse_colour("#ff0000", false).unwrap(), Color::Indexed(196));
        assert_eq!(parse_colour("#000000", false).unwrap(), Color::Indexed(16));
        assert_eq!(parse_colour("#808080", false).unwrap(), Color::Indexed(244));
        assert_eq!(
            parse_colour("#0072b2", true).unwrap(),
            Color::Rgb(0, 0x72, 0xb2)
        );
        assert!(parse_colour("red", false).is_err());
    }

    #[test]
    fn a_broken_theme_gives_the_default_and_a_message() {
        assert!(Theme::parse("name = 3", "x", true).is_err());
        let (t, msg) = Theme::load("no-such-theme", false);
        assert_eq!(t.name, "dark");
        assert!(msg.unwrap().contains("no-such-theme"));
    }
}
