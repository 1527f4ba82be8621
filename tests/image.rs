//! The lifeline image as `make image` writes it (target/image/lifeline-VERSION.oci.tar):
//! its metadata, its size and contents, and its binary run under runc the way a
//! restricted pod runs it — as UID 65532 on a read-only root filesystem.
//!
//! Needs `make image` first (`make test` does it), umoci and runc (scripts/install-deps.sh)
//! and root (runc creates namespaces and cgroups). `LIFELINE_SKIP_CLUSTER_TESTS=1` skips it.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> String {
    format!(
        "ghcr.io/lifeline-dev/lifeline:{}",
        env!("CARGO_PKG_VERSION")
    )
}

fn archive() -> Option<PathBuf> {
    if std::env::var("LIFELINE_SKIP_CLUSTER_TESTS").as_deref() == Ok("1") {
        eprintln!("LIFELINE_SKIP_CLUSTER_TESTS=1: skipping the image test");
        return None;
    }
    let p = root().join(format!(
        "target/image/lifeline-{}.oci.tar",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(p.exists(), "{} is missing: run `make image`", p.display());
    Some(p)
}

fn run(cmd: &mut Command) -> std::process::Output {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = root().join(format!(
            "target/tmp/image-test-{tag}-{:08x}",
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Unpack the archive into an OCI layout, then into a runtime bundle (umoci builds
/// `config.json` from the image config: user, entrypoint, env, working dir).
fn unpack(archive: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let layout = dir.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&layout));
    let bundle = dir.join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{}", layout.display(), reference()))
        .arg(&bundle));
    (layout, bundle)
}

fn blob(layout: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let text = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
    serde_json::from_slice(&text).unwrap()
}

fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_dir() {
            total += tree_size(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

#[test]
fn image_metadata_size_and_contents() {
    let Some(archive) = archive() else { return };
    let scratch = Scratch::new("meta");
    let (layout, bundle) = unpack(&archive, &scratch.0);

    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_desc = &index["manifests"][0];
    assert_eq!(
        manifest_desc["annotations"]["org.opencontainers.image.ref.name"],
        reference(),
        "the archive names the chart's default image"
    );
    let manifest = blob(&layout, manifest_desc["digest"].as_str().unwrap());
    let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532");
    assert_eq!(c["Entrypoint"][0], "/usr/local/bin/lifeline");
    let labels = &c["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        labels["org.opencontainers.image.source"],
        "https://github.com/lifeline-dev/lifeline"
    );
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap();
    assert!(
        revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()),
        "revision label is a commit: {revision}"
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");

    let rootfs = bundle.join("rootfs");
    let size = tree_size(&rootfs);
    eprintln!(
        "image {}: {:.1} MiB uncompressed, archive {:.1} MiB",
        reference(),
        size as f64 / 1048576.0,
        std::fs::metadata(&archive).unwrap().len() as f64 / 1048576.0
    );
    assert!(
        size < 60 * 1024 * 1024,
        "image is {size} bytes, over 60 MiB"
    );
    // No shell, no package manager, no dynamic loader: one static binary.
    for absent in [
        "bin/sh",
        "usr/bin/sh",
        "bin/bash",
        "usr/bin/apt",
        "usr/bin/dpkg",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(
            std::fs::symlink_metadata(rootfs.join(absent)).is_err(),
            "{absent} must not be in the image"
        );
    }
    let bundle_pem =
        std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle_pem.matches("BEGIN CERTIFICATE").count() > 100);
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains(":65532:65532:"), "{passwd}");
}

#[test]
fn binary_runs_as_65532_on_a_read_only_root_under_runc() {
    let Some(archive) = archive() else { return };
    let scratch = Scratch::new("runc");
    let (_, bundle) = unpack(&archive, &scratch.0);

    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // What umoci derived from the image config: the non-root user.
    assert_eq!(spec["process"]["user"]["uid"], 65532);
    assert_eq!(spec["process"]["user"]["gid"], 65532);
    let entry = spec["process"]["args"][0].clone();
    assert_eq!(entry, "/usr/local/bin/lifeline");
    // As a restricted pod runs it: read-only root, no new privileges, no capabilities.
    spec["root"]["readonly"] = Value::Bool(true);
    spec["process"]["terminal"] = Value::Bool(false);
    spec["process"]["noNewPrivileges"] = Value::Bool(true);
    spec["process"]["capabilities"] = serde_json::json!({
        "bounding": [], "effective": [], "permitted": [], "inheritable": [], "ambient": []
    });
    spec["process"]["args"] = serde_json::json!([entry, "--version"]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let id = format!("lifeline-image-test-{:08x}", rand::random::<u32>());
    let state = scratch.0.join("runc");
    let out = run(Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id));
    // `runc run` deletes the container when it exits; make sure on every path.
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["delete", "--force", &id])
        .output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("runc: {}", stdout.trim());
    assert_eq!(
        stdout.trim(),
        format!("lifeline {}", env!("CARGO_PKG_VERSION")),
        "lifeline --version inside the image"
    );
}
