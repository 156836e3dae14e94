//! A strict JSON (RFC 8259) parser into a value whose strings borrow from the input.
//!
//! Why not serde_json here: a paid request carries a ~14 MB base64 string, and profiling the
//! gateway under load showed serde_json's 8-bytes-at-a-time string scan taking ~45 % of its
//! CPU per request. This parser finds the end of a string with `memchr` (SIMD) and checks its
//! bytes in one vectorisable pass, so a large string costs two fast scans; with the body's scan
//! marks (`scan.rs`) a base64 string costs neither. It accepts and
//! rejects exactly what serde_json does (tests compare the two on generated input), and turns
//! numbers into `serde_json::Number` through serde_json itself.

use std::borrow::Cow;

use super::scan::Marks;

/// Nesting deeper than this is refused (serde_json's limit too).
const MAX_DEPTH: usize = 128;

/// A JSON value whose strings borrow from the request body where they have no escapes.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    /// `null`
    Null,
    /// `true`/`false`
    Bool(bool),
    /// A number.
    Num(serde_json::Number),
    /// A string.
    Str(Cow<'a, str>),
    /// An array.
    Arr(Vec<Json<'a>>),
    /// An object, members in order (duplicates kept; callers decide).
    Obj(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// Where and why the input is not JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct JsonError {
    /// Offset of the problem.
    pub at: usize,
    /// What was wrong.
    pub what: &'static str,
}

/// Parses one JSON value (surrounded by optional whitespace) from `input` (tests; the gateway
/// passes its scan marks to `parse_marked`).
#[cfg(test)]
pub fn parse(input: &[u8]) -> Result<Json<'_>, JsonError> {
    parse_marked(input, None)
}

/// As `parse`, with the input's scan marks (`scan.rs`): a string that runs to its closing quote
/// without a mark holds only base64 alphabet bytes, so it needs neither the search for its end
/// nor the check of its bytes. Marks of another input are ignored.
pub fn parse_marked<'a>(input: &'a [u8], marks: Option<&'a Marks>) -> Result<Json<'a>, JsonError> {
    let marks = marks.filter(|m| m.of(input));
    let mut p = Parser { s: input, i: 0, marks, hint: 0 };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("trailing characters"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    marks: Option<&'a Marks>,
    /// Where the last look into `marks` ended (the parser only moves forward).
    hint: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError { at: self.i, what }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json<'a>, JsonError> {
        match self.s.get(self.i) {
            None => Err(self.err("EOF while parsing a value")),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') => self.literal(b"true", Json::Bool(true)),
            Some(b'f') => self.literal(b"false", Json::Bool(false)),
            Some(b'n') => self.literal(b"null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected value")),
        }
    }

    fn literal(&mut self, word: &'static [u8], v: Json<'a>) -> Result<Json<'a>, JsonError> {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(v)
        } else {
            Err(self.err("expected value"))
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json<'a>, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("recursion limit exceeded"));
        }
        self.i += 1;
        let mut members = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Json::Obj(members));
        }
        loop {
            self.ws();
            if self.s.get(self.i) != Some(&b'"') {
                return Err(self.err("key must be a string"));
            }
            let key = self.string()?;
            self.ws();
            if self.s.get(self.i) != Some(&b':') {
                return Err(self.err("expected `:`"));
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth)?;
            members.push((key, v));
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Json::Obj(members));
                }
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json<'a>, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("recursion limit exceeded"));
        }
        self.i += 1;
        let mut items = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Json::Arr(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth)?);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                _ => return Err(self.err("expected `,` or `]`")),
            }
        }
    }

    /// Checks raw string bytes (no quote or backslash inside): no control characters, valid
    /// UTF-8. One pass for the common all-ASCII case.
    fn checked(&self, at: usize, bytes: &'a [u8]) -> Result<&'a str, JsonError> {
        // Branch-free OR-reduction over the slice: LLVM vectorises this.
        let odd = bytes.iter().fold(0u8, |acc, &b| acc | (u8::from(b < 0x20) | (b & 0x80)));
        if odd == 0 {
            // SAFETY: every byte is below 0x80 (checked just above), and ASCII is valid UTF-8.
            // Re-validating 14 MB here cost 8 % of the gateway's CPU per large request.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        if let Some(k) = bytes.iter().position(|&b| b < 0x20) {
            return Err(JsonError { at: at + k, what: "control character in string" });
        }
        std::str::from_utf8(bytes).map_err(|e| JsonError { at: at + e.valid_up_to(), what: "invalid UTF-8 in string" })
    }

    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.i += 1; // opening quote
        let start = self.i;
        if let Some(m) = self.marks {
            // Between marks every byte is base64 alphabet; the marks themselves are looked at
            // one by one, so a run of plain ASCII (padding, a data URL's `:;,`) stays a run.
            let mut from = start;
            loop {
                let (next, hint) = m.next(from, self.hint);
                self.hint = hint;
                match next.map(|e| (e, self.s[e])) {
                    Some((end, b'"')) => {
                        self.i = end + 1;
                        // SAFETY: every byte from `start` to `end` is ASCII (alphabet, or a
                        // printable mark checked below), so this is valid UTF-8 and needs no
                        // unescaping.
                        return Ok(Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(&self.s[start..end]) }));
                    }
                    Some((e, 0x20..=0x7e)) if self.s[e] != b'\\' => from = e + 1,
                    _ => break,
                }
            }
        }
        let mut owned: Option<String> = None;
        let mut run = start;
        loop {
            let rest = &self.s[self.i..];
            let Some(k) = memchr::memchr2(b'"', b'\\', rest) else {
                self.i = self.s.len();
                return Err(self.err("EOF while parsing a string"));
            };
            let seg_end = self.i + k;
            let seg = self.checked(run, &self.s[run..seg_end])?;
            if self.s[seg_end] == b'"' {
                self.i = seg_end + 1;
                return Ok(match owned {
                    None => Cow::Borrowed(seg),
                    Some(mut o) => {
                        o.push_str(seg);
                        Cow::Owned(o)
                    }
                });
            }
            let o = owned.get_or_insert_with(String::new);
            o.push_str(seg);
            self.i = seg_end + 1;
            self.escape(o)?;
            run = self.i;
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), JsonError> {
        let Some(&c) = self.s.get(self.i) else { return Err(self.err("EOF while parsing a string")) };
        self.i += 1;
        let ch = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = self.hex4()?;
                if (0xDC00..0xE000).contains(&hi) {
                    return Err(self.err("lone trailing surrogate in hex escape"));
                }
                if (0xD800..0xDC00).contains(&hi) {
                    if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                        return Err(self.err("lone leading surrogate in hex escape"));
                    }
                    self.i += 2;
                    let lo = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(self.err("lone leading surrogate in hex escape"));
                    }
                    let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    char::from_u32(cp).ok_or_else(|| self.err("invalid unicode code point"))?
                } else {
                    char::from_u32(hi).ok_or_else(|| self.err("invalid unicode code point"))?
                }
            }
            _ => return Err(self.err("invalid escape")),
        };
        out.push(ch);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self.s.get(self.i..self.i + 4).ok_or_else(|| self.err("EOF while parsing a string"))?;
        let mut v = 0u32;
        for &d in digits {
            let n = (d as char).to_digit(16).ok_or_else(|| self.err("invalid escape"))?;
            v = v * 16 + n;
        }
        self.i += 4;
        Ok(v)
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.s.get(self.i) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Json<'a>, JsonError> {
        let start = self.i;
        if self.s[self.i] == b'-' {
            self.i += 1;
        }
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        // The token is ASCII digits and signs; serde_json gives the same Number it would have.
        let token = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("invalid number"))?;
        serde_json::from_str::<serde_json::Number>(token)
            .map(Json::Num)
            .map_err(|_| JsonError { at: start, what: "number out of range" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_value(j: &Json<'_>) -> serde_json::Value {
        match j {
            Json::Null => serde_json::Value::Null,
            Json::Bool(b) => (*b).into(),
            Json::Num(n) => serde_json::Value::Number(n.clone()),
            Json::Str(s) => serde_json::Value::String(s.to_string()),
            Json::Arr(a) => a.iter().map(to_value).collect(),
            Json::Obj(o) => serde_json::Value::Object(o.iter().map(|(k, v)| (k.to_string(), to_value(v))).collect()),
        }
    }

    /// Same verdict and same value as serde_json.
    fn agrees_with_serde(input: &[u8]) {
        let ours = parse(input);
        let theirs = serde_json::from_slice::<serde_json::Value>(input);
        match (&ours, &theirs) {
            (Ok(a), Ok(b)) => assert_eq!(&to_value(a), b, "{:?}", String::from_utf8_lossy(input)),
            (Err(_), Err(_)) => {}
            _ => panic!("disagree on {:?}: ours {ours:?}, serde {theirs:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn agrees_with_serde_json_on_tricky_inputs() {
        let cases: &[&str] = &[
            "{}",
            "[]",
            " { \"a\" : [ 1 , -2.5e3 , true , false , null , \"x\" ] } ",
            "\"\\u00e9\\ud83d\\ude00\\n\\/\"",
            "\"\\ud83d\"",
            "\"\\ude00\"",
            "\"\\ud83d\\u0041\"",
            "\"\\x\"",
            "\"a\tb\"",
            "\"a\u{1}b\"",
            "01",
            "-",
            "1.",
            "1e",
            "1e+",
            "-0",
            "0.5E-7",
            "1e400",
            "18446744073709551616",
            "-9223372036854775809",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "tru",
            "nul",
            "[",
            "\"abc",
            "\"\\",
            "\"\\u12",
            "{} x",
            "  ",
            "",
            "[[[[]]]]",
            "\"é漢\"",
            "{\"a\":1,\"a\":2}",
            "[1 2]",
            "\u{feff}{}",
            "1 ",
            "\r\n{}\t",
        ];
        for c in cases {
            agrees_with_serde(c.as_bytes());
        }
        agrees_with_serde(b"\"\xff\"");
        agrees_with_serde(b"\"\xc3\"");
        agrees_with_serde(&[b'"', 0xe2, 0x82, 0xac, b'"']);
    }

    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
            "[ -~]{0,12}".prop_map(|s| format!("\"{s}\"")),
            ".{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            "\\\\u[0-9a-fA-F]{4}".prop_map(|s| format!("\"{s}\"")),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(("[a-z]{0,4}", inner), 0..6).prop_map(|v| format!(
                    "{{{}}}",
                    v.into_iter().map(|(k, v)| format!("\"{k}\": {v}")).collect::<Vec<_>>().join(" , ")
                )),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4000, ..Default::default() })]

        #[test]
        fn agrees_with_serde_json_on_generated_documents(doc in json_text()) {
            agrees_with_serde(doc.as_bytes());
        }

        #[test]
        fn agrees_with_serde_json_on_mutated_documents(doc in json_text(), at in 0usize..64, byte in proptest::prelude::any::<u8>(), cut in proptest::prelude::any::<bool>()) {
            let mut b = doc.into_bytes();
            if !b.is_empty() {
                let i = at % b.len();
                if cut { b.truncate(i) } else { b[i] = byte }
            }
            agrees_with_serde(&b);
        }
    }

    fn marked_agrees(b: &[u8]) {
        let marks = Marks::of_whole(b);
        assert!(marks.is_some() || b.len() < crate::policy::scan::MIN_SCANNED);
        assert_eq!(parse_marked(b, marks.as_ref()), parse(b));
    }

    #[test]
    fn marks_change_nothing_on_odd_strings() {
        let run = "QUJD".repeat(20_000);
        for inner in ["\x1f", "a\x01b", "\x7f", "caf\u{e9}", "a\\\"b", "a\\nb", "\\u00e9", "sp ace", "x=", "==", "a\"b"]
        {
            for body in [
                format!("{{\"a\":\"{run}==\",\"b\":\"{inner}\"}}"),
                format!("{{\"b\":\"{inner}{run}\"}}"),
                format!("[\"{run}{inner}\"]"),
            ] {
                marked_agrees(body.as_bytes());
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

        /// Marks change how fast a body is parsed, never what comes out or which error.
        #[test]
        fn marks_change_nothing_but_speed(doc in json_text(), run in 65_536usize..70_000, at in proptest::prelude::any::<usize>(),
                                          byte in proptest::prelude::any::<u8>(), how in 0u8..4) {
            let b64: String = (0..run).map(|i| b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i * 7 % 64] as char).collect();
            let mut b = format!("{{\"img\":\"{b64}==\", \"Ab9\": \"xyz\", \"doc\": {doc}, \"z\":\"q\"}}").into_bytes();
            let i = at % b.len();
            match how {
                0 => b[i] = byte,
                1 => b.truncate(i),
                2 => b.insert(i, byte),
                _ => {}
            }
            marked_agrees(&b);
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep.as_bytes()).is_err());
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let body = br#"{"a":"plain","b":"esc\"aped"}"#;
        let Json::Obj(m) = parse(body).unwrap() else { panic!() };
        assert!(matches!(m[0].1, Json::Str(Cow::Borrowed("plain"))));
        assert_eq!(m[1].1, Json::Str(Cow::Owned("esc\"aped".into())));
    }
}
