//! The example configuration in docs/rules.md parses.

use lrp_rules::{Registry, RuleConfig};

#[test]
fn docs_example_parses() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/rules.md"))
        .unwrap();
    let start = text.find("```ron\n").expect("a ron block") + "```ron\n".len();
    let end = start + text[start..].find("```").unwrap();
    let config = RuleConfig::parse(
        &text[start..end],
        "docs/rules.md",
        &Registry::with_builtins(),
    )
    .unwrap();
    assert_eq!(config.name, "my-method");
    assert_eq!(config.rules.len(), 5);
}
