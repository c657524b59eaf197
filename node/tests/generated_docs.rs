//! The generated documents in docs/ are what the code generates now: the
//! configuration reference and the agent API's OpenAPI description.

use std::path::Path;

fn check(file: &str, generated: String, command: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == generated,
        "{file} is out of date: run `{command} > {file}` and commit it"
    );
}

#[test]
fn the_configuration_reference_is_current() {
    check(
        "docs/configuration-reference.md",
        agentmesh_node::config::reference_markdown(),
        "agentmesh config reference",
    );
}

#[test]
fn the_openapi_description_is_current() {
    let spec = agentmesh_node::api::openapi().to_pretty_json().unwrap();
    check("docs/openapi.json", spec + "\n", "agentmesh openapi");
}
