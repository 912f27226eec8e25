//! Finding the workspace's other binaries (e.g. `rask-worker`) next to the
//! running one, as cargo lays them out in `target/<profile>/`.

use std::io;
use std::path::{Path, PathBuf};

/// The path of binary `name` (e.g. `"rask-worker"`) built beside the running
/// executable: in the same folder, or, when the caller is a test binary in
/// `target/<profile>/deps/`, in the folder above.
///
/// # Errors
///
/// `NotFound`, naming the folders searched, if it is in neither (build it
/// with `cargo build --workspace --bins`).
pub fn sibling_binary(name: &str) -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| io::Error::other(format!("{} has no parent folder", exe.display())))?;
    find_in(name, &candidate_dirs(dir))
}

/// The running binary's folder and, if that is a `deps` folder, its parent.
fn candidate_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![dir.to_owned()];
    if dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(parent) = dir.parent() {
            dirs.push(parent.to_owned());
        }
    }
    dirs
}

/// The first `dir/name` (with the platform's executable suffix) that is a
/// file.
fn find_in(name: &str, dirs: &[PathBuf]) -> io::Result<PathBuf> {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    dirs.iter()
        .map(|dir| dir.join(&file))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                "binary `{file}` not found in {}; build it with `cargo build --workspace --bins`",
                searched.join(" or ")
            ),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deps_folders_also_search_their_parent() {
        let dirs = candidate_dirs(Path::new("/x/target/debug/deps"));
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/x/target/debug/deps"),
                PathBuf::from("/x/target/debug")
            ]
        );
        assert_eq!(candidate_dirs(Path::new("/x/target/debug")).len(), 1);
    }

    #[test]
    fn finds_a_file_in_the_second_folder_and_names_both_when_missing() {
        let root = std::env::temp_dir().join(format!("rask-binaries-test-{}", std::process::id()));
        let deps = root.join("deps");
        std::fs::create_dir_all(&deps).expect("temp dirs");
        std::fs::write(root.join("some-tool"), "").expect("fake binary");
        let dirs = candidate_dirs(&deps);

        assert_eq!(
            find_in("some-tool", &dirs).expect("found"),
            root.join("some-tool")
        );
        let error = find_in("missing-tool", &dirs).expect_err("missing");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(error.to_string().contains("deps"), "{error}");
        let _ = std::fs::remove_dir_all(root);
    }
}
