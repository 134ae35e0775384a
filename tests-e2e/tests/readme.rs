//! The README's configuration table is generated from the code's tables of variables; this test
//! fails when the two drift apart and prints the table to paste.

use std::path::PathBuf;

use shared::config::{COMMON_ENV, markdown_table};
use shared::http_client::CLIENT_ENV;
use shared::telemetry::TELEMETRY_ENV;

const BEGIN: &str = "<!-- config-table:begin -->";
const END: &str = "<!-- config-table:end -->";

/// Who reads what: the common settings and the OpenTelemetry variables every service, the
/// retrying client's only the order service (the one that calls the others), and each
/// service's own table that service.
fn expected_table() -> String {
    markdown_table(&[
        ("all services", COMMON_ENV),
        ("all services", TELEMETRY_ENV),
        ("order", order_service::config::ENV),
        ("order", CLIENT_ENV),
        ("payment", payment_service::config::ENV),
        ("stock", stock_service::config::ENV),
    ])
}

fn readme() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn readme_configuration_table_matches_the_code() {
    let readme = readme();
    let expected = expected_table();
    assert_eq!(readme.matches(BEGIN).count(), 1, "README.md needs exactly one {BEGIN}");
    assert_eq!(readme.matches(END).count(), 1, "README.md needs exactly one {END}");
    let start = readme.find(BEGIN).map(|i| i + BEGIN.len()).unwrap_or_default();
    let end = readme.find(END).unwrap_or_default();
    assert!(start <= end, "{END} comes before {BEGIN} in README.md");
    let actual = readme[start..end].trim();
    if actual != expected.trim() {
        panic!(
            "README.md's configuration table differs from the code's tables. \
             Replace the lines between {BEGIN} and {END} with:\n\n{}\n",
            expected.trim()
        );
    }
}
