//! A scripted model server speaking the Responses API as the Codex CLI uses it: `POST
//! /v1/responses` answered with server-sent events. It is stateless per request: the step is
//! chosen by how many tool-call outputs the (re-sent) conversation already holds.
//!
//! It listens on the host side of an internal engine network the test creates, so the agent
//! container reaches it without any route to the outside.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What the server answers.
#[derive(Debug, Clone)]
pub enum Step {
    /// A 200 event stream: these events, then the connection closes.
    Events(Vec<serde_json::Value>),
    /// An HTTP error with a JSON body.
    Status(u16, &'static str),
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    #[allow(dead_code)] // kept for debugging output of failed assertions
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

pub struct ModelServer {
    pub addr: SocketAddr,
    /// Steps by the number of tool-call outputs in the request: the last step whose number is
    /// at most the count answers.
    script: Arc<Mutex<Vec<(usize, Step)>>>,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl ModelServer {
    pub fn start(ip: IpAddr) -> ModelServer {
        let listener = TcpListener::bind((ip, 0)).expect("bind the model server");
        let addr = listener.local_addr().unwrap();
        let script: Arc<Mutex<Vec<(usize, Step)>>> = Arc::default();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let (s, r) = (script.clone(), requests.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, r) = (s.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &s, &r);
                });
            }
        });
        ModelServer {
            addr,
            script,
            requests,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn script(&self, steps: Vec<(usize, Step)>) {
        *self.script.lock().unwrap() = steps;
        self.requests.lock().unwrap().clear();
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    conn: TcpStream,
    script: &Mutex<Vec<(usize, Step)>>,
    requests: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        reader.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    requests.lock().unwrap().push(Request {
        method: method.clone(),
        path: path.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });
    let mut out = conn;
    if method != "POST" || !path.ends_with("/responses") {
        out.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
        return Ok(());
    }
    let outputs = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["input"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|i| {
            i["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("_call_output"))
        })
        .count();
    let step = script
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(n, _)| *n <= outputs)
        .map(|(_, s)| s.clone())
        .unwrap_or(Step::Status(500, "no scripted step"));
    match step {
        Step::Status(code, message) => {
            let body = serde_json::json!({"error": {"message": message, "type": "scripted", "code": code.to_string()}}).to_string();
            write!(
                out,
                "HTTP/1.1 {code} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )?;
        }
        Step::Events(events) => {
            out.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n")?;
            for e in events {
                write!(
                    out,
                    "event: {}\ndata: {e}\n\n",
                    e["type"].as_str().unwrap_or("message")
                )?;
            }
            out.flush()?;
        }
    }
    Ok(())
}

/// `response.output_item.done` for an `apply_patch` call.
pub fn apply_patch(call_id: &str, patch: &str) -> serde_json::Value {
    serde_json::json!({"type": "response.output_item.done", "item": {"type": "custom_tool_call", "call_id": call_id, "name": "apply_patch", "input": patch}})
}

/// `response.output_item.done` for an `exec_command` call.
pub fn exec_command(call_id: &str, cmd: &str) -> serde_json::Value {
    let args = serde_json::json!({ "cmd": cmd }).to_string();
    serde_json::json!({"type": "response.output_item.done", "item": {"type": "function_call", "call_id": call_id, "name": "exec_command", "arguments": args}})
}

pub fn message(text: &str) -> serde_json::Value {
    serde_json::json!({"type": "response.output_item.done", "item": {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}})
}

pub fn completed(id: &str, input: u64, cached: u64, output: u64) -> serde_json::Value {
    serde_json::json!({"type": "response.completed", "response": {"id": id, "usage": {"input_tokens": input, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": input + output}}})
}
