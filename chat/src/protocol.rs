//! The wire protocol: JSON text frames, one object each, `op` from the client and `ev` from the
//! server. A text frame that does not start with `{` is a `say` to the current room.

use serde::Deserialize;
use serde_json::{json, Value};

/// Room names: 1 to 64 characters of letters, digits, `-`, `_`, `.` and `:`.
pub const MAX_ROOM_NAME: usize = 64;
/// Nicknames: 1 to 32 characters, no control characters.
pub const MAX_NICK: usize = 32;
/// The largest history page a client can ask for (a page is also cut at a size in bytes).
pub const MAX_HISTORY_PAGE: usize = 200;
/// A history page's length when the client does not say.
pub const DEFAULT_HISTORY_PAGE: usize = 50;
/// The longest `cid` a client may attach to an op, as JSON.
pub const MAX_CID: usize = 128;
/// Members listed in `joined` and `who` at most (`count` gives them all).
pub const MAX_LISTED: usize = 1000;

/// What a client asks for. Any op may carry a `cid` (a string or number the client chooses):
/// the answer to it, or the error, carries the same `cid`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
/// Ops without fields are empty struct variants, not unit ones: serde's `deny_unknown_fields`
/// refuses extra fields only in struct variants, and the protocol refuses them everywhere.
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    Hello {
        nick: String,
    },
    Join {
        room: String,
        #[serde(default)]
        since: Option<u64>,
        #[serde(default)]
        epoch: Option<String>,
    },
    Leave {
        room: String,
    },
    Say {
        room: String,
        text: String,
    },
    History {
        room: String,
        #[serde(default)]
        before: Option<u64>,
        #[serde(default)]
        limit: Option<usize>,
    },
    Rooms {},
    Who {
        room: String,
    },
    Match {},
    Next {},
    Unmatch {},
    Typing {
        room: String,
    },
    Ping {},
}

impl Op {
    /// Tokens of the connection's rate limit this op costs: about what it makes the server do.
    /// A message, a join or a ping costs one; answers read from the store or built from every
    /// room or member cost more, so no client can buy many expensive answers at the price of
    /// messages.
    pub fn cost(&self) -> f64 {
        match self {
            Op::History { limit, .. } => {
                let limit = limit
                    .unwrap_or(DEFAULT_HISTORY_PAGE)
                    .clamp(1, MAX_HISTORY_PAGE);
                1.0 + (limit as f64 / 25.0).ceil()
            }
            Op::Join { since: Some(_), .. } | Op::Rooms {} => 5.0,
            Op::Who { .. } => 2.0,
            _ => 1.0,
        }
    }
}

/// The room every connection starts in.
pub const LOBBY: &str = "lobby";
/// Rooms made by matchmaking start with this; clients cannot join them by name.
pub const PAIR_PREFIX: &str = "pair:";

/// Why a frame was not understood: the `error` event's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub cid: Option<Value>,
    /// The room a refused `join` (or other room op) named, so a client can tell which.
    pub room: Option<String>,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            cid: None,
            room: None,
        }
    }

    pub fn with_room(mut self, room: &str) -> Self {
        self.room = Some(room.to_owned());
        self
    }

    pub fn with_cid(mut self, cid: Option<Value>) -> Self {
        self.cid = cid;
        self
    }

    pub fn to_json(&self) -> String {
        let mut v = json!({"ev": "error", "code": self.code, "message": self.message});
        if let Some(cid) = &self.cid {
            v["cid"] = cid.clone();
        }
        if let Some(room) = &self.room {
            v["room"] = Value::String(room.clone());
        }
        v.to_string()
    }
}

/// A text frame as the client meant it: a protocol message (and its `cid`), or plain text to
/// say in the current room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Op { op: Op, cid: Option<Value> },
    Plain(String),
}

/// Read a text frame. Bad JSON, an unknown op or a missing field is a [`Refusal`], and the
/// connection stays open.
pub fn parse(text: &str) -> Result<Frame, Refusal> {
    if !text.trim_start().starts_with('{') {
        return Ok(Frame::Plain(text.to_owned()));
    }
    let mut value: Value = serde_json::from_str(text)
        .map_err(|e| Refusal::new("bad_json", format!("not a JSON object: {e}")))?;
    let Some(object) = value.as_object_mut() else {
        return Err(Refusal::new("bad_json", "not a JSON object"));
    };
    let cid = object.remove("cid");
    if let Some(c) = &cid {
        if !(c.is_string() || c.is_number()) || c.to_string().len() > MAX_CID {
            return Err(Refusal::new(
                "bad_request",
                format!("`cid` must be a string or a number of at most {MAX_CID} bytes"),
            ));
        }
    }
    let op = match object.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(_) => return Err(Refusal::new("bad_request", "`op` must be a string").with_cid(cid)),
        None => return Err(Refusal::new("bad_request", "missing `op`").with_cid(cid)),
    };
    match serde_json::from_value::<Op>(value) {
        Ok(op) => Ok(Frame::Op { op, cid }),
        Err(e) => {
            let known = [
                "hello", "join", "leave", "say", "history", "rooms", "who", "match", "next",
                "unmatch", "typing", "ping",
            ];
            Err(if known.contains(&op.as_str()) {
                Refusal::new("bad_request", format!("{op}: {e}")).with_cid(cid)
            } else {
                Refusal::new("unknown_op", format!("unknown op `{op}`")).with_cid(cid)
            })
        }
    }
}

/// Whether `text` may be said: not empty, and no control characters but tab and line breaks
/// (they would be sent as six-byte `\u00XX` escapes to every member: a 64 KiB message of them
/// would cost 390 KB per recipient).
pub fn check_text(text: &str) -> Result<(), Refusal> {
    if text.is_empty() {
        return Err(Refusal::new("bad_request", "empty message"));
    }
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(Refusal::new(
            "bad_text",
            "control characters other than tab and line breaks are not allowed",
        ));
    }
    Ok(())
}

/// Whether `room` is a name a client may use. Pair rooms (`pair:...`) are made by matchmaking
/// and cannot be joined by name.
pub fn check_room(room: &str) -> Result<(), Refusal> {
    let ok = !room.is_empty()
        && room.len() <= MAX_ROOM_NAME
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            "bad_room",
            format!("room names are 1 to {MAX_ROOM_NAME} of A-Z a-z 0-9 - _ . :"),
        ))
    }
}

pub fn check_nick(nick: &str) -> Result<(), Refusal> {
    let n = nick.chars().count();
    if n == 0 || n > MAX_NICK || nick.chars().any(char::is_control) || nick.trim() != nick {
        return Err(Refusal::new(
            "bad_nick",
            format!(
                "nicknames are 1 to {MAX_NICK} characters, no control characters or edge spaces"
            ),
        ));
    }
    Ok(())
}

/// A stored message as the `msg` event carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub room: String,
    pub seq: u64,
    pub from: String,
    pub text: String,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    pub cid: Option<Value>,
}

impl Msg {
    /// The `msg` event; with the `cid` only for its sender (others never see a client's cids).
    pub fn to_value(&self, with_cid: bool) -> Value {
        let mut v = json!({
            "ev": "msg", "room": self.room, "seq": self.seq, "from": self.from,
            "text": self.text, "ts": self.ts,
        });
        if let (true, Some(cid)) = (with_cid, &self.cid) {
            v["cid"] = cid.clone();
        }
        v
    }

    /// The `msg` event's JSON text: `to_value(with_cid)`'s, byte for byte (keys in the same
    /// order, serde_json's escaping), written straight into one buffer. Every message is
    /// framed this way once per batch, and building a tree of values for it, then a string
    /// from the tree, was a measurable part of the hub's time per message.
    pub fn to_json(&self, with_cid: bool) -> String {
        let mut out = Vec::with_capacity(self.text.len() + self.from.len() + self.room.len() + 96);
        out.push(b'{');
        if let (true, Some(cid)) = (with_cid, &self.cid) {
            out.extend_from_slice(b"\"cid\":");
            write_json(&mut out, cid);
            out.push(b',');
        }
        out.extend_from_slice(b"\"ev\":\"msg\",\"from\":");
        write_json(&mut out, self.from.as_str());
        out.extend_from_slice(b",\"room\":");
        write_json(&mut out, self.room.as_str());
        out.extend_from_slice(b",\"seq\":");
        write_json(&mut out, &self.seq);
        out.extend_from_slice(b",\"text\":");
        write_json(&mut out, self.text.as_str());
        out.extend_from_slice(b",\"ts\":");
        write_json(&mut out, &self.ts);
        out.push(b'}');
        // JSON written from `str`s and numbers is UTF-8.
        String::from_utf8(out).expect("JSON text is UTF-8")
    }
}

/// `frame` (a `msg` event's JSON text without a `cid`, from [`Msg::to_json`]) with `cid` first,
/// as `to_json(true)` writes it: the sender's copy of a message, made from everyone's copy
/// without writing the message again.
pub fn cid_first(frame: &str, cid: &Value) -> String {
    let mut out = Vec::with_capacity(frame.len() + 24);
    out.extend_from_slice(b"{\"cid\":");
    write_json(&mut out, cid);
    out.push(b',');
    out.extend_from_slice(frame.strip_prefix('{').unwrap_or(frame).as_bytes());
    // UTF-8 JSON around a UTF-8 frame.
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// Append `value`'s JSON text (serde_json's, escaping included).
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing into a Vec cannot fail, and strings, numbers and `Value`s always serialize.
    serde_json::to_writer(out, value).expect("JSON into memory");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_parse_and_plain_text_is_a_say() {
        assert_eq!(
            parse(r#"{"op":"join","room":"a","since":3,"cid":"j1"}"#).unwrap(),
            Frame::Op {
                op: Op::Join {
                    room: "a".into(),
                    since: Some(3),
                    epoch: None
                },
                cid: Some(json!("j1"))
            }
        );
        assert_eq!(
            parse(" hi there").unwrap(),
            Frame::Plain(" hi there".into())
        );
        assert_eq!(
            parse(r#"{"op":"rooms"}"#).unwrap(),
            Frame::Op {
                op: Op::Rooms {},
                cid: None
            }
        );
    }

    #[test]
    fn bad_frames_are_refusals_with_their_cid() {
        assert_eq!(parse("{nope").unwrap_err().code, "bad_json");
        let r = parse(r#"{"op":"dance","cid":7}"#).unwrap_err();
        assert_eq!((r.code, r.cid), ("unknown_op", Some(json!(7))));
        assert_eq!(
            parse(r#"{"op":"say","room":"a"}"#).unwrap_err().code,
            "bad_request"
        );
        assert_eq!(parse(r#"{"room":"a"}"#).unwrap_err().code, "bad_request");
        assert_eq!(parse(r#"{"op":5}"#).unwrap_err().code, "bad_request");
        assert_eq!(
            parse("[1]").unwrap(),
            Frame::Plain("[1]".into()),
            "not an object: text"
        );
        let long = format!(r#"{{"op":"rooms","cid":"{}"}}"#, "x".repeat(200));
        assert_eq!(parse(&long).unwrap_err().code, "bad_request");
        assert_eq!(
            parse(r#"{"op":"rooms","cid":{"a":1}}"#).unwrap_err().code,
            "bad_request"
        );
    }

    #[test]
    fn text_rules_and_costs() {
        assert!(check_text("hi\tthere\r\n").is_ok());
        assert_eq!(check_text("").unwrap_err().code, "bad_request");
        assert_eq!(check_text("a\u{1}b").unwrap_err().code, "bad_text");
        let history = |limit| Op::History {
            room: "r".into(),
            before: None,
            limit,
        };
        assert_eq!(history(None).cost(), 3.0);
        assert_eq!(history(Some(200)).cost(), 9.0);
        assert_eq!(history(Some(100_000)).cost(), 9.0);
        assert_eq!(Op::Rooms {}.cost(), 5.0);
        assert_eq!(Op::Ping {}.cost(), 1.0);
    }

    #[test]
    fn a_msg_is_written_as_the_tree_would_give_it_byte_for_byte() {
        let texts = [
            "plain",
            "a \"quoted\" line\\ with \t tab, \r\n breaks and \u{7f} \u{1} \u{1f} \u{2028}",
            "é ünïcødé 漢字 and an emoji \u{1F600} </script>",
            "",
        ];
        let cids = [
            None,
            Some(json!("c\"1")),
            Some(json!(7)),
            Some(json!(-1.5)),
            Some(json!(u64::MAX)),
        ];
        for text in texts {
            for cid in &cids {
                let m = Msg {
                    room: "r.1:x".into(),
                    seq: 42,
                    from: "ann \"the\" \\ nick ü".into(),
                    text: text.into(),
                    ts: 1_765_000_000_123,
                    cid: cid.clone(),
                };
                for with_cid in [false, true] {
                    assert_eq!(m.to_json(with_cid), m.to_value(with_cid).to_string());
                }
                if let Some(cid) = cid {
                    assert_eq!(cid_first(&m.to_json(false), cid), m.to_json(true));
                }
            }
        }
    }

    #[test]
    fn room_and_nick_rules() {
        assert!(check_room("lobby").is_ok());
        assert!(check_room("").is_err());
        assert!(check_room("a b").is_err());
        assert!(check_room(&"x".repeat(65)).is_err());
        assert!(check_nick("ann").is_ok());
        assert!(check_nick(" ann").is_err());
        assert!(check_nick("a\u{7}").is_err());
    }
}
