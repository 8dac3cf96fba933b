//! `notifyhub new NAME --lang rust|python|js`: a plugin project that builds
//! with one command, passes `check`, and comes with a test that delivers
//! through a real daemon to a local receiver.
//!
//! Everything a project needs is compiled into the binary — the WIT
//! contract, the language's helper (the Rust SDK, `notifyhub_plugin.py`,
//! `notifyhub-plugin.js`) and the templates in `host/templates/` — so a
//! project created anywhere builds without this repository, against
//! exactly the contract of the host that created it.

use std::path::{Path, PathBuf};

use clap::ValueEnum;

/// A language `new` can scaffold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Language {
    Rust,
    Python,
    Js,
}

#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "`{0}` is not a plugin name: use lowercase letters, digits and dashes, starting with a letter"
    )]
    Name(String),
    #[error("{0} already exists; choose another name or --dir")]
    Exists(PathBuf),
    #[error("cannot write {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// `(path in the project, contents)`; `{{name}}`, `{{crate}}` and `{{lang}}`
/// are filled in.
type Files = &'static [(&'static str, &'static str)];

const WIT: Files = &[
    ("wit/plugin.wit", include_str!("../../wit/plugin.wit")),
    ("wit/README.md", include_str!("../../wit/README.md")),
    ("wit/deps/cli.wit", include_str!("../../wit/deps/cli.wit")),
    (
        "wit/deps/clocks.wit",
        include_str!("../../wit/deps/clocks.wit"),
    ),
    (
        "wit/deps/filesystem.wit",
        include_str!("../../wit/deps/filesystem.wit"),
    ),
    ("wit/deps/http.wit", include_str!("../../wit/deps/http.wit")),
    ("wit/deps/io.wit", include_str!("../../wit/deps/io.wit")),
    (
        "wit/deps/notifyhub-http/http.wit",
        include_str!("../../wit/deps/notifyhub-http/http.wit"),
    ),
    (
        "wit/deps/notifyhub-smtp/smtp.wit",
        include_str!("../../wit/deps/notifyhub-smtp/smtp.wit"),
    ),
    (
        "wit/deps/random.wit",
        include_str!("../../wit/deps/random.wit"),
    ),
    (
        "wit/deps/sockets.wit",
        include_str!("../../wit/deps/sockets.wit"),
    ),
];

const COMMON: Files = &[
    ("README.md", include_str!("../templates/common/README.md")),
    (
        "receiver.py",
        include_str!("../templates/common/receiver.py"),
    ),
    ("test.sh", include_str!("../templates/common/test.sh")),
];

const RUST: Files = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("build.sh", include_str!("../templates/rust/build.sh")),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    (
        "vendor/notifyhub-plugin-sdk/Cargo.toml",
        include_str!("../templates/rust/sdk-Cargo.toml"),
    ),
    (
        "vendor/notifyhub-plugin-sdk/src/lib.rs",
        include_str!("../../plugins/sdk/src/lib.rs"),
    ),
    (
        "vendor/notifyhub-plugin-sdk/src/fit.rs",
        include_str!("../../plugins/sdk/src/fit.rs"),
    ),
    (
        "vendor/notifyhub-plugin-sdk/src/form.rs",
        include_str!("../../plugins/sdk/src/form.rs"),
    ),
    (
        "vendor/notifyhub-plugin-sdk/src/format.rs",
        include_str!("../../plugins/sdk/src/format.rs"),
    ),
    (
        "vendor/notifyhub-plugin-sdk/src/html.rs",
        include_str!("../../plugins/sdk/src/html.rs"),
    ),
    (
        "vendor/notifyhub-plugin-sdk/src/http.rs",
        include_str!("../../plugins/sdk/src/http.rs"),
    ),
    (
        "vendor/notifyhub-plugin-sdk/src/mail.rs",
        include_str!("../../plugins/sdk/src/mail.rs"),
    ),
    (
        "vendor/notifyhub-plugin-sdk/src/mrkdwn.rs",
        include_str!("../../plugins/sdk/src/mrkdwn.rs"),
    ),
    (
        "vendor/notifyhub-plugin-sdk/src/sign.rs",
        include_str!("../../plugins/sdk/src/sign.rs"),
    ),
    (
        "vendor/notifyhub-plugin-sdk/src/smtp.rs",
        include_str!("../../plugins/sdk/src/smtp.rs"),
    ),
    (
        "vendor/notifyhub-plugin-sdk/src/time.rs",
        include_str!("../../plugins/sdk/src/time.rs"),
    ),
];

const PYTHON: Files = &[
    ("app.py", include_str!("../templates/python/app.py")),
    ("build.sh", include_str!("../templates/python/build.sh")),
    (
        "requirements.txt",
        include_str!("../templates/python/requirements.txt"),
    ),
    (
        "notifyhub_plugin.py",
        include_str!("../../plugins/python/notifyhub_plugin.py"),
    ),
];

const JS: Files = &[
    ("plugin.js", include_str!("../templates/js/plugin.js")),
    ("build.sh", include_str!("../templates/js/build.sh")),
    ("package.json", include_str!("../templates/js/package.json")),
    (
        "notifyhub-plugin.js",
        include_str!("../../plugins/js/notifyhub-plugin.js"),
    ),
];

/// Creates the project for `name` in `dir` (which must not exist) and
/// returns the files written.
pub fn create(name: &str, language: Language, dir: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(ScaffoldError::Name(name.to_string()));
    }
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.to_path_buf()));
    }
    let (files, lang) = match language {
        Language::Rust => (RUST, "rust"),
        Language::Python => (PYTHON, "python"),
        Language::Js => (JS, "js"),
    };
    let crate_name = name.replace('-', "_");
    let mut written = Vec::new();
    for (path, contents) in WIT.iter().chain(COMMON).chain(files) {
        let target = dir.join(path);
        let contents = contents
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{lang}}", lang);
        write(&target, &contents, path.ends_with(".sh"))?;
        written.push(target);
    }
    Ok(written)
}

fn write(path: &Path, contents: &str, executable: bool) -> Result<(), ScaffoldError> {
    use std::os::unix::fs::PermissionsExt;
    let error = |error| ScaffoldError::Write {
        path: path.to_path_buf(),
        error,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    std::fs::write(path, contents).map_err(error)?;
    if executable {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(error)?;
    }
    Ok(())
}

/// What to do after `new`, for the terminal.
pub fn next_steps(language: Language, dir: &Path) -> String {
    let setup = match language {
        Language::Rust => "rustup target add wasm32-wasip2",
        Language::Python => "pip install -r requirements.txt",
        Language::Js => "npm install",
    };
    format!(
        "next:\n  cd {}\n  {setup}\n  ./build.sh      # builds the component\n  ./test.sh       # builds, checks and delivers to a local receiver",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rust_project_vendors_every_file_of_the_sdk() {
        let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk/src");
        for entry in std::fs::read_dir(sdk).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().to_string();
            let vendored = format!("vendor/notifyhub-plugin-sdk/src/{name}");
            assert!(
                RUST.iter().any(|(path, _)| *path == vendored),
                "scaffold.rs does not vendor plugins/sdk/src/{name}"
            );
        }
    }

    #[test]
    fn refuses_bad_names_and_existing_directories() {
        let dir = std::env::temp_dir().join(format!("nh-scaffold-{}", std::process::id()));
        for bad in ["Upper", "1st", "with space", "a/b", ""] {
            assert!(matches!(
                create(bad, Language::Rust, &dir.join("x")),
                Err(ScaffoldError::Name(_))
            ));
        }
        let files = create("my-hook", Language::Python, &dir).unwrap();
        assert!(files.iter().any(|f| f.ends_with("wit/deps/http.wit")));
        let test = std::fs::read_to_string(dir.join("test.sh")).unwrap();
        assert!(test.contains("my-hook.wasm") && !test.contains("{{"));
        assert!(matches!(
            create("my-hook", Language::Python, &dir),
            Err(ScaffoldError::Exists(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
