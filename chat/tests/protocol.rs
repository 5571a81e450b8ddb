//! chat/protocol/chat.schema.json is the protocol's contract: every frame the server sends in
//! any test is checked against it (tests/util's `Chat`), and here what it says about clients'
//! frames is held against what a real server does with them, and against chat/README.md.

mod util;

use serde_json::{json, Value};
use util::*;

/// Ops that are well formed: the schema takes them and the server carries them out.
fn good_ops() -> Vec<Value> {
    vec![
        json!({"op": "hello", "nick": "ann"}),
        json!({"op": "hello", "nick": "Zoë the 2nd"}),
        json!({"op": "join", "room": "r-1.a:b_c"}),
        json!({"op": "join", "room": "r-1.a:b_c", "since": 0, "epoch": "elsewhere"}),
        json!({"op": "say", "room": "r-1.a:b_c", "text": "hi\tthere\r\n"}),
        json!({"op": "history", "room": "r-1.a:b_c"}),
        json!({"op": "history", "room": "r-1.a:b_c", "before": 2, "limit": 0}),
        json!({"op": "history", "room": "r-1.a:b_c", "limit": 100_000}),
        json!({"op": "rooms"}),
        json!({"op": "who", "room": "r-1.a:b_c"}),
        json!({"op": "typing", "room": "r-1.a:b_c"}),
        json!({"op": "leave", "room": "r-1.a:b_c"}),
        json!({"op": "match"}),
        json!({"op": "unmatch"}),
        json!({"op": "ping"}),
    ]
}

/// Ops that are not: the schema refuses them and so does the server (an `error` with the cid).
fn bad_ops() -> Vec<Value> {
    vec![
        json!({"op": "dance"}),
        json!({"op": "say", "room": "r"}),
        json!({"op": "say", "room": "r", "text": ""}),
        json!({"op": "say", "room": "r", "text": "bell\u{7}"}),
        json!({"op": "say", "room": "r", "text": 5}),
        json!({"op": "join", "room": ""}),
        json!({"op": "join", "room": "a b"}),
        json!({"op": "join", "room": "x".repeat(65)}),
        json!({"op": "join", "room": "r", "since": -1}),
        json!({"op": "join", "room": "r", "colour": "red"}),
        json!({"op": "hello", "nick": ""}),
        json!({"op": "hello", "nick": " ann"}),
        json!({"op": "hello", "nick": "a\u{1b}[31m"}),
        json!({"op": "hello", "nick": "n".repeat(33)}),
        json!({"op": "history", "room": "r", "limit": "ten"}),
        json!({"op": "rooms", "all": true}),
        json!({"op": 5}),
        json!({"room": "r"}),
    ]
}

#[test]
fn the_schema_and_the_server_agree_on_every_op() {
    let client = protocol_schema("ClientFrame");
    let server = TestServer::start(&[]);
    let mut c = Chat::connect(&server.url);
    for (i, op) in good_ops().into_iter().enumerate() {
        assert!(client.is_valid(&op), "the schema refuses a good op: {op}");
        let cid = format!("good-{i}");
        let mut sent = op.clone();
        sent["cid"] = json!(cid);
        assert!(client.is_valid(&sent), "the schema refuses a cid: {sent}");
        c.send(sent);
        // An op may have no answer of its own (typing): `who` after it is a barrier, since a
        // connection's ops are carried out in order and a refusal is sent before what follows.
        let barrier = format!("barrier-{i}");
        c.send(json!({"op": "who", "room": "lobby", "cid": barrier}));
        let mut answered = false;
        loop {
            let v = c.next();
            if v["cid"] == json!(barrier) {
                break;
            }
            if v["cid"] == json!(cid) {
                assert_ne!(v["ev"], "error", "the server refused a good op {op}: {v}");
                answered = true;
            }
        }
        let silent = op["op"] == "typing";
        assert_eq!(
            answered, !silent,
            "{op} is answered exactly when it has an answer"
        );
    }
    for (i, op) in bad_ops().into_iter().enumerate() {
        assert!(!client.is_valid(&op), "the schema takes a bad op: {op}");
        let cid = format!("bad-{i}");
        let mut sent = op.clone();
        sent["cid"] = json!(cid);
        c.send(sent);
        let refusal = loop {
            let v = c.next();
            if v["cid"] == json!(cid) {
                break v;
            }
        };
        assert_eq!(
            refusal["ev"], "error",
            "the server took a bad op {op}: {refusal}"
        );
    }
}

#[test]
fn the_schema_is_strict_about_server_frames() {
    let server = protocol_schema("ServerFrame");
    let msg = json!({"ev": "msg", "room": "r", "seq": 1, "from": "ann", "text": "hi", "ts": 1});
    assert!(server.is_valid(&msg));
    let mut extra = msg.clone();
    extra["colour"] = json!("red");
    assert!(
        !server.is_valid(&extra),
        "a field the contract does not name"
    );
    let mut missing = msg.clone();
    missing.as_object_mut().unwrap().remove("seq");
    assert!(!server.is_valid(&missing), "a required field missing");
    assert!(
        !server.is_valid(&json!({"ev": "dance"})),
        "an event it does not name"
    );
    assert!(!server.is_valid(&json!({"ev": "error", "code": "oops", "message": "?"})));
}

/// The names in the first column of the README's protocol table, and every event it mentions.
fn readme_protocol() -> (Vec<String>, Vec<String>) {
    let readme = include_str!("../README.md");
    let start = readme.find("| client `op` | server answers |").unwrap();
    let table: Vec<&str> = readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    let names = |cell: &str| -> Vec<String> {
        cell.split('`')
            .skip(1)
            .step_by(2)
            .map(|code| {
                code.split(['{', ' ', '('])
                    .next()
                    .unwrap()
                    .trim_end_matches(',')
                    .to_owned()
            })
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect()
    };
    let mut ops = Vec::new();
    let mut evs = Vec::new();
    for row in table {
        let cells: Vec<&str> = row.split('|').collect();
        ops.extend(names(cells[1]));
        evs.extend(names(cells[2]));
    }
    (ops, evs)
}

#[test]
fn the_readme_names_every_op_and_event_of_the_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/chat.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let defs = schema["$defs"].as_object().unwrap();
    let in_schema = |prefix: &str| -> Vec<String> {
        let mut v: Vec<String> = defs
            .keys()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_owned))
            .collect();
        v.sort();
        v
    };
    let (ops, evs) = readme_protocol();
    let mut readme_ops = ops.clone();
    readme_ops.sort();
    readme_ops.dedup();
    assert_eq!(
        readme_ops,
        in_schema("op_"),
        "chat/README.md's protocol table lists the schema's ops"
    );
    let readme = include_str!("../README.md");
    for ev in in_schema("ev_") {
        assert!(
            evs.contains(&ev) || readme.contains(&format!("`{ev}{{")),
            "chat/README.md never shows the event `{ev}`"
        );
    }
}
