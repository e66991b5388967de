//! The server's modules point down only: no module names a module of a higher layer (the layers
//! `lib.rs` describes). A module that reaches up makes an import circle again (as `Core` once
//! did, imported by two dozen files it imported back).

use std::path::Path;

/// Each top-level module's layer, lowest first.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("config", 0),
    ("password", 0),
    ("version", 0),
    // keel-state's modules, under the names lib.rs gives them.
    ("alarm", 0),
    ("lease", 0),
    ("membership", 0),
    ("range", 0),
    ("txn", 0),
    ("validate", 0),
    ("member", 1),
    ("backup", 2),
    ("api", 3),
    ("gateway", 4),
    ("ops", 4),
    ("startup", 5),
];

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|&(_, l)| l)
        .unwrap_or_else(|| panic!("module `{module}` has no layer in tests/layers.rs"))
}

/// The `crate::<module>` paths a source file names, comments left out.
fn crate_paths(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
        if let Some(group) = code.split("crate::{").nth(1) {
            for item in group.split([',', '}']) {
                let item = item.trim();
                if item.starts_with(|c: char| c.is_ascii_lowercase()) {
                    found.push(item.split("::").next().unwrap_or(item).to_string());
                }
            }
        }
    }
    found
}

fn visit(dir: &Path, src: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("a source dir") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            visit(&path, src, out);
            continue;
        }
        let rel = path.strip_prefix(src).expect("under src");
        let module = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|m| m.trim_end_matches(".rs"))
            .expect("a module");
        if module == "lib" {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("readable");
        for used in crate_paths(&source) {
            if used != module && layer(&used) >= layer(module) && layer(&used) > 0 {
                out.push(format!("{} names crate::{used}", rel.display()));
            }
        }
    }
}

#[test]
fn modules_point_down_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut upward = Vec::new();
    visit(&src, &src, &mut upward);
    assert!(upward.is_empty(), "imports of a higher layer: {upward:#?}");
}

#[test]
fn the_check_sees_an_upward_import() {
    let paths =
        crate_paths("use crate::startup::Server; // crate::ops\nuse crate::{member, ServerError};");
    assert_eq!(paths, ["startup", "member"]);
}
