//! Writes the client API's OpenAPI document to `docs/openapi.json` (or to
//! the path given as the only argument; `-` prints it).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let text = match flotilla_api::openapi::document_json() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("openapi: cannot serialize the document: {e}");
            return ExitCode::FAILURE;
        }
    };
    let target = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(flotilla_api::openapi::DOCUMENT_PATH)
        });
    if target.as_os_str() == "-" {
        print!("{text}");
        return ExitCode::SUCCESS;
    }
    match std::fs::write(&target, text) {
        Ok(()) => {
            eprintln!("wrote {}", target.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("openapi: cannot write {}: {e}", target.display());
            ExitCode::FAILURE
        }
    }
}
