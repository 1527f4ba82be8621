//! The CRDs, the examples and the invalid fixtures against the real API server from
//! `tests/testenv`: what a user sees through `kubectl apply`, `kubectl get` and
//! `kubectl explain`, and the messages they get for a broken manifest.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, Client, CustomResourceExt};
use lifeline::crd::{
    BotPool, BotPoolSpec, FallbackPolicy, FallbackPolicySpec, Trunk, TrunkSpec, all_crds,
};
use serde_json::{Value, json};

const FIELD_MANAGER: &str = "lifeline-tests";

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A private kubectl discovery cache, so kubectl never answers from a cache written
/// before the CRDs last changed; removed on drop.
struct Kubectl {
    cache_dir: PathBuf,
}

impl Kubectl {
    fn new() -> Self {
        let cache_dir = std::env::temp_dir().join(format!(
            "lifeline-crds-kubectl-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        Self { cache_dir }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new("kubectl");
        cmd.env("KUBECONFIG", common::kubeconfig_path())
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .arg("--request-timeout=30s")
            .args(args)
            .kill_on_drop(true);
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in 60 s"))
            .unwrap_or_else(|e| panic!("kubectl {args:?} could not start: {e}"))
    }

    /// Run kubectl and return stdout; panic with stderr when it fails.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.cache_dir);
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| {
            <Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn api_resource(kind: &str) -> ApiResource {
    match kind {
        "Trunk" => ApiResource::erase::<Trunk>(&()),
        "BotPool" => ApiResource::erase::<BotPool>(&()),
        "FallbackPolicy" => ApiResource::erase::<FallbackPolicy>(&()),
        other => panic!("not a lifeline kind: {other}"),
    }
}

fn kind_and_name(doc: &Value) -> (String, String) {
    let kind = doc["kind"].as_str().expect("kind").to_string();
    let name = doc["metadata"]["name"]
        .as_str()
        .expect("metadata.name")
        .to_string();
    (kind, name)
}

/// Server-side apply a raw manifest (as written, nothing filled in) into `ns`.
async fn apply_raw(client: &Client, ns: &str, doc: &Value) -> Result<DynamicObject, kube::Error> {
    let (kind, name) = kind_and_name(doc);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &api_resource(&kind));
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(doc),
    )
    .await
}

/// Collapse runs of whitespace, so text wrapped by kubectl compares with the source.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_apply_server_side_and_become_established() {
    let Some(client) = common::client().await else {
        return;
    };
    let path = repo_path("crds/lifeline.dev.yaml");
    let committed = std::fs::read_to_string(&path).expect("crds/lifeline.dev.yaml exists");
    assert_eq!(
        committed,
        lifeline::crd::crds_yaml().expect("CRDs render"),
        "crds/lifeline.dev.yaml differs from the Rust types: run `make crds`"
    );

    // The API server compiles every CEL rule and estimates its cost on apply; a rule
    // over the budget or one that does not compile makes this fail.
    let kubectl = Kubectl::new();
    let out = kubectl
        .ok(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            FIELD_MANAGER,
            "-f",
            path.to_str().expect("utf-8 path"),
        ])
        .await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in all_crds() {
        let name = crd.metadata.name.clone().expect("CRD name");
        assert!(
            out.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{name} serverside-applied"
            )),
            "{name} not applied: {out}"
        );
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(
                crds.clone(),
                &name,
                kube::runtime::wait::conditions::is_crd_established(),
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{name} not Established in 30 s"))
        .expect("watch CRD");
    }
}

/// Every example applies with `kubectl apply --server-side`, reads back as written, and
/// `kubectl get trk,bp,fbp` shows the printer columns with the objects' values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_apply_and_kubectl_get_shows_the_columns() {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let kubectl = Kubectl::new();
    for example in ["examples/minimal", "examples/carrier-outage"] {
        let ns = common::TestNamespace::create(client.clone(), "crds-example", &[]).await;
        let dir = repo_path(example);
        kubectl
            .ok(&[
                "apply",
                "--server-side",
                "-n",
                &ns.name,
                "-f",
                dir.to_str().expect("utf-8 path"),
            ])
            .await;

        let docs: Vec<Value> = yaml_files(&dir).iter().flat_map(|f| yaml_docs(f)).collect();
        assert!(docs.len() >= 3, "{example}: too few objects");
        for doc in &docs {
            let (kind, name) = kind_and_name(doc);
            let what = format!("{example}: {kind} {name}");
            // Typed on both sides, so the defaults the server filled in compare equal to
            // the defaults serde fills in for the file.
            match kind.as_str() {
                "Trunk" => {
                    let want: Trunk = serde_json::from_value(doc.clone()).expect(&what);
                    let got = ns.api::<Trunk>().get(&name).await.expect(&what);
                    assert_eq!(got.spec, want.spec, "{what}");
                }
                "BotPool" => {
                    let want: BotPool = serde_json::from_value(doc.clone()).expect(&what);
                    let got = ns.api::<BotPool>().get(&name).await.expect(&what);
                    assert_eq!(got.spec, want.spec, "{what}");
                }
                "FallbackPolicy" => {
                    let want: FallbackPolicy = serde_json::from_value(doc.clone()).expect(&what);
                    let got = ns.api::<FallbackPolicy>().get(&name).await.expect(&what);
                    assert_eq!(got.spec, want.spec, "{what}");
                }
                "SipEdge" => {
                    let want: lifeline::crd::SipEdge =
                        serde_json::from_value(doc.clone()).expect(&what);
                    let got = ns
                        .api::<lifeline::crd::SipEdge>()
                        .get(&name)
                        .await
                        .expect(&what);
                    assert_eq!(got.spec, want.spec, "{what}");
                }
                other => panic!("{example}: unexpected kind {other}"),
            }
        }

        let table = kubectl
            .ok(&["get", "trk,bp,fbp,sipe", "-n", &ns.name])
            .await;
        for header in [
            "REGION",
            "MEDIUM",
            "HEALTHY",
            "STATE",
            "READY",
            "DESIRED",
            "CAPACITY",
            "DEMAND",
            "ACTIVE REGIONS",
            "DEGRADED",
            "CAPACITY OK",
            "AGE",
        ] {
            assert!(
                table.contains(header),
                "{example}: no {header} column in\n{table}"
            );
        }
        for doc in &docs {
            let (kind, name) = kind_and_name(doc);
            let resource = match kind.as_str() {
                "Trunk" => "trunk",
                "BotPool" => "botpool",
                "SipEdge" => "sipedge",
                _ => "fallbackpolicy",
            };
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("{resource}.lifeline.dev/{name} ")))
                .unwrap_or_else(|| panic!("{example}: no row for {kind} {name} in\n{table}"));
            let cells: Vec<&str> = row.split_whitespace().collect();
            if let Some(region) = doc["spec"]["region"].as_str() {
                assert_eq!(
                    cells.get(1),
                    Some(&region),
                    "{example}: REGION of {name}: {row}"
                );
            }
            if let Some(medium) = doc["spec"]["medium"].as_str() {
                assert_eq!(
                    cells.get(2),
                    Some(&medium),
                    "{example}: MEDIUM of {name}: {row}"
                );
            }
        }
    }
}

/// `kubectl explain` shows the doc comments of the Rust types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_shows_the_field_docs() {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let kubectl = Kubectl::new();

    let crd = serde_json::to_value(Trunk::crd()).expect("CRD as JSON");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let probe = &schema["properties"]["spec"]["properties"]["probe"];
    let fields = probe["properties"].as_object().expect("probe has fields");
    assert!(fields.len() >= 5, "probe fields: {fields:?}");

    // The API server publishes a changed CRD's OpenAPI a moment after the change.
    let text = common::eventually(
        Duration::from_secs(30),
        "kubectl explain trunk.spec.probe",
        || async {
            let out = kubectl.run(&["explain", "trunk.spec.probe"]).await;
            out.status
                .success()
                .then(|| squash(&String::from_utf8_lossy(&out.stdout)))
        },
    )
    .await;
    let want = squash(probe["description"].as_str().expect("probe description"));
    assert!(text.contains(&want), "no {want:?} in {text}");
    for (field, spec) in fields {
        let doc = squash(spec["description"].as_str().expect("field description"));
        assert!(text.contains(field.as_str()), "no field {field} in {text}");
        assert!(text.contains(&doc), "no doc {doc:?} for {field} in {text}");
    }

    let kind = squash(&kubectl.ok(&["explain", "trunk"]).await);
    let want = squash(schema["description"].as_str().expect("kind description"));
    assert!(kind.contains(&want), "no {want:?} in {kind}");
    assert!(!kind.contains("Auto-generated"), "{kind}");
}

/// Every manifest in `tests/fixtures/invalid/` is rejected by the API server with the
/// message fragment in its `.expected` file, and for that one mistake only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_fixtures_are_rejected_with_their_message() {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = common::TestNamespace::create(client.clone(), "crds-invalid", &[]).await;

    let files = yaml_files(&repo_path("tests/fixtures/invalid"));
    assert!(files.len() >= 30, "only {} invalid fixtures", files.len());
    let mut problems = Vec::new();
    for path in &files {
        let fixture = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .to_string();
        let expected = std::fs::read_to_string(path.with_extension("expected"))
            .unwrap_or_else(|e| panic!("{fixture}: no .expected beside it: {e}"));
        let expected = expected.trim();
        assert!(!expected.is_empty(), "{fixture}: empty .expected");
        let docs = yaml_docs(path);
        assert_eq!(docs.len(), 1, "{fixture}: one object per fixture");
        match apply_raw(&client, &ns.name, &docs[0]).await {
            Ok(_) => problems.push(format!("{fixture}: ACCEPTED")),
            Err(kube::Error::Api(status)) => {
                if !status.message.contains(expected) {
                    problems.push(format!(
                        "{fixture}: expected {expected:?}, got {:?}",
                        status.message
                    ));
                }
                // The server adds a note that it skipped the CEL rules when the OpenAPI
                // schema already failed; that is not a second mistake.
                let causes: Vec<&str> = status
                    .details
                    .iter()
                    .flat_map(|d| &d.causes)
                    .map(|c| c.message.as_str())
                    .filter(|m| !m.contains("some validation rules were not checked"))
                    .collect();
                if causes.len() != 1 {
                    problems.push(format!(
                        "{fixture}: {} errors, want 1: {causes:?}",
                        causes.len()
                    ));
                }
            }
            Err(other) => problems.push(format!("{fixture}: {other}")),
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} invalid fixtures misbehave:\n{}",
        problems.len(),
        files.len(),
        problems.join("\n")
    );
}

/// A manifest with only the required fields comes back from the API server with every
/// default filled in, and those defaults are the ones the Rust types use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_objects_round_trip_with_defaults_filled_in() {
    let Some(client) = common::client().await else {
        return;
    };
    common::install_crds(&client).await;
    let ns = common::TestNamespace::create(client.clone(), "crds-defaults", &[]).await;

    let trunk = json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "Trunk",
        "metadata": { "name": "bare" },
        "spec": { "region": "cologne", "endpoints": [{ "uri": "sip:127.0.50.11:5060" }] },
    });
    let botpool = json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "BotPool",
        "metadata": { "name": "bare" },
        "spec": { "region": "cologne", "image": "registry.example.net/phone-bot:1.0",
                  "callsPerReplica": 10 },
    });
    let policy = json!({
        "apiVersion": "lifeline.dev/v1alpha1", "kind": "FallbackPolicy",
        "metadata": { "name": "bare" },
        "spec": {
            "routingConfigMap": { "name": "sip-routing" },
            "regions": [{ "name": "cologne" }],
            "routes": [{ "name": "inbound", "setId": 1, "tiers": [
                { "name": "bots", "targets": [{ "botPool": "bare" }] }] }],
        },
    });

    for (doc, with_serde_defaults) in [
        (&trunk, spec_with_defaults::<TrunkSpec>(&trunk)),
        (&botpool, spec_with_defaults::<BotPoolSpec>(&botpool)),
        (&policy, spec_with_defaults::<FallbackPolicySpec>(&policy)),
    ] {
        let (kind, _) = kind_and_name(doc);
        let stored = apply_raw(&client, &ns.name, doc)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let stored_spec = stored.data["spec"].clone();
        assert_ne!(
            &stored_spec, &doc["spec"],
            "{kind}: the server filled in nothing"
        );
        assert_eq!(
            stored_spec, with_serde_defaults,
            "{kind}: server defaults differ from serde defaults"
        );
    }
}

/// The spec of `doc` as the Rust type fills it in (serde defaults), back as JSON.
fn spec_with_defaults<S>(doc: &Value) -> Value
where
    S: serde::de::DeserializeOwned + serde::Serialize,
{
    let spec: S = serde_json::from_value(doc["spec"].clone()).expect("minimal spec parses");
    serde_json::to_value(spec).expect("spec serializes")
}
