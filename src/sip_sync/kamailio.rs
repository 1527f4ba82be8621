//! A small JSON-RPC 2.0 client for Kamailio's `jsonrpcs` module served over HTTP by
//! `xhttp` (POST to e.g. `http://127.0.0.1:5071/RPC`).
//!
//! Hand-written on top of reqwest because sip-sync needs two methods without
//! parameters; a general JSON-RPC crate would add more surface than it removes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::routing::dispatcher::{self, DispatcherList};

/// Why an RPC call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Kamailio is not reachable (not started yet, restarting, wrong address).
    #[error("cannot reach Kamailio at {url}: {reason}")]
    Connect {
        /// The RPC URL.
        url: String,
        /// The transport error with its causes (e.g. "connection refused").
        reason: String,
    },
    /// The HTTP exchange failed or returned a non-success status.
    #[error("HTTP error from Kamailio: {0}")]
    Http(String),
    /// Kamailio answered with a JSON-RPC error object.
    #[error("Kamailio {method} failed: {code} {message}")]
    Rpc {
        /// The method called.
        method: &'static str,
        /// JSON-RPC error code.
        code: i64,
        /// JSON-RPC error message.
        message: String,
    },
    /// The answer was not the JSON we expected.
    #[error("unexpected answer from Kamailio: {0}")]
    Decode(String),
}

impl RpcError {
    /// Short static category for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            RpcError::Connect { .. } => "connect",
            RpcError::Http(_) => "http",
            RpcError::Rpc { .. } => "rpc",
            RpcError::Decode(_) => "decode",
        }
    }
}

/// Client for one Kamailio instance.
#[derive(Clone, Debug)]
pub struct KamailioRpc {
    http: reqwest::Client,
    url: String,
    next_id: std::sync::Arc<AtomicU64>,
}

impl KamailioRpc {
    /// A client posting to `url`; each call gives up after `timeout`.
    pub fn new(url: impl Into<String>, timeout: Duration) -> Result<Self, RpcError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| RpcError::Http(e.to_string()))?;
        Ok(Self {
            http,
            url: url.into(),
            next_id: Default::default(),
        })
    }

    /// The URL this client posts to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Call `method` without parameters and return its `result`.
    pub async fn call(&self, method: &'static str) -> Result<Value, RpcError> {
        self.call_with(method, Value::Null).await
    }

    /// Call `method` with positional `params` (none when `Null`).
    pub async fn call_with(&self, method: &'static str, params: Value) -> Result<Value, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = json!({ "jsonrpc": "2.0", "method": method, "id": id });
        if !params.is_null() {
            request["params"] = params;
        }
        let response = self
            .http
            .post(&self.url)
            .json(&request)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() || e.is_timeout() {
                    RpcError::Connect {
                        url: self.url.clone(),
                        reason: with_causes(&e),
                    }
                } else {
                    RpcError::Http(with_causes(&e))
                }
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| RpcError::Http(e.to_string()))?;
        let answer: Value = serde_json::from_slice(&body).map_err(|e| {
            if status.is_success() {
                RpcError::Decode(e.to_string())
            } else {
                RpcError::Http(format!("status {status}"))
            }
        })?;
        decode_answer(method, answer)
    }

    /// `dispatcher.reload`: Kamailio re-reads its list file.
    pub async fn reload_dispatcher(&self) -> Result<(), RpcError> {
        self.call("dispatcher.reload").await.map(|_| ())
    }

    /// `dispatcher.list`: the destinations Kamailio has loaded now.
    pub async fn list_dispatcher(&self) -> Result<DispatcherList, RpcError> {
        match self.call("dispatcher.list").await {
            Ok(result) => {
                dispatcher::from_rpc_result(&result).map_err(|e| RpcError::Decode(e.to_string()))
            }
            // Kamailio reports an empty table as an error rather than an empty list.
            Err(RpcError::Rpc { message, .. }) if message == "No Destination Sets" => {
                Ok(DispatcherList::default())
            }
            Err(e) => Err(e),
        }
    }
}

impl KamailioRpc {
    /// Destinations Kamailio holds out of service now (its FLAGS start with `I`
    /// inactive or `D` disabled, e.g. marked by the failure route or by its own
    /// probing), with their FLAGS.
    pub async fn down_marks(&self) -> Result<Vec<(dispatcher::Destination, String)>, RpcError> {
        let result = match self.call("dispatcher.list").await {
            Ok(r) => r,
            Err(RpcError::Rpc { message, .. }) if message == "No Destination Sets" => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for record in result["RECORDS"].as_array().into_iter().flatten() {
            let Some(set_id) = record["SET"]["ID"]
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
            else {
                continue;
            };
            for target in record["SET"]["TARGETS"].as_array().into_iter().flatten() {
                let (Some(uri), Some(flags)) = (
                    target["DEST"]["URI"].as_str(),
                    target["DEST"]["FLAGS"].as_str(),
                ) else {
                    continue;
                };
                if flags.starts_with('I') || flags.starts_with('D') {
                    out.push((
                        dispatcher::Destination {
                            set_id,
                            uri: uri.to_string(),
                        },
                        flags.to_string(),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// `dispatcher.set_state`: put a destination back into the state `flags` (as
    /// `dispatcher.list` shows it, e.g. `IP`: inactive, probing).
    pub async fn set_state(
        &self,
        destination: &dispatcher::Destination,
        flags: &str,
    ) -> Result<(), RpcError> {
        let state: String = flags
            .chars()
            .take(2)
            .filter(|c| *c != 'X')
            .collect::<String>()
            .to_lowercase();
        self.call_with(
            "dispatcher.set_state",
            json!([state, destination.set_id, destination.uri]),
        )
        .await
        .map(|_| ())
    }
}

/// The error and its sources, so that a log says "connection refused" rather than
/// only "error sending request".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Turn a JSON-RPC answer into its result or an [`RpcError::Rpc`].
fn decode_answer(method: &'static str, answer: Value) -> Result<Value, RpcError> {
    if let Some(error) = answer.get("error") {
        return Err(RpcError::Rpc {
            method,
            code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    answer
        .get("result")
        .cloned()
        .ok_or_else(|| RpcError::Decode("no result and no error".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_results_and_errors() {
        let ok = json!({"jsonrpc":"2.0","result":"Ok. Dispatcher successfully reloaded.","id":1});
        assert_eq!(
            decode_answer("dispatcher.reload", ok).unwrap(),
            json!("Ok. Dispatcher successfully reloaded.")
        );
        let err =
            json!({"jsonrpc":"2.0","error":{"code":500,"message":"No Destination Sets"},"id":1});
        match decode_answer("dispatcher.list", err) {
            Err(RpcError::Rpc { code, message, .. }) => {
                assert_eq!(code, 500);
                assert_eq!(message, "No Destination Sets");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decode_answer("x", json!({"id": 1})).unwrap_err().category(),
            "decode"
        );
    }
}
