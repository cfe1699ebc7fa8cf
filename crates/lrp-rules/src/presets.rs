//! The bundled rule configurations (`rules/*.ron`), loaded by name.

use crate::config::{ConfigError, RuleConfig};
use crate::registry::Registry;

/// Every preset: name and RON text.
pub const PRESETS: &[(&str, &str)] = &[
    ("lrp", include_str!("../../../rules/lrp.ron")),
    ("clrp", include_str!("../../../rules/clrp.ron")),
    ("sglrp", include_str!("../../../rules/sglrp.ron")),
    (
        "sglrp-seq-a",
        include_str!("../../../rules/sglrp-seq-a.ron"),
    ),
    (
        "sglrp-seq-b",
        include_str!("../../../rules/sglrp-seq-b.ron"),
    ),
    ("lrp-a", include_str!("../../../rules/lrp-a.ron")),
    ("lrp-b", include_str!("../../../rules/lrp-b.ron")),
    (
        "lrp-epsilon",
        include_str!("../../../rules/lrp-epsilon.ron"),
    ),
    (
        "epsilon-plus",
        include_str!("../../../rules/epsilon-plus.ron"),
    ),
    (
        "epsilon-plus-flat",
        include_str!("../../../rules/epsilon-plus-flat.ron"),
    ),
    (
        "epsilon-gamma-box",
        include_str!("../../../rules/epsilon-gamma-box.ron"),
    ),
    (
        "epsilon-alpha2beta1",
        include_str!("../../../rules/epsilon-alpha2beta1.ron"),
    ),
    (
        "epsilon-alpha2beta1-flat",
        include_str!("../../../rules/epsilon-alpha2beta1-flat.ron"),
    ),
];

/// The names of the presets.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// Loads preset `name`; an unknown name is an error listing the presets.
pub fn preset(name: &str, registry: &Registry) -> Result<RuleConfig, String> {
    let (_, text) = PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| format!("unknown method '{name}' (methods: {})", names().join(", ")))?;
    RuleConfig::parse(text, &format!("rules/{name}.ron"), registry)
        .map_err(|e: ConfigError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses() {
        let reg = Registry::with_builtins();
        for name in names() {
            let c = preset(name, &reg).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(c.name, name);
        }
        assert!(preset("nope", &reg).unwrap_err().contains("sglrp-seq-a"));
    }
}
