//! Why generations fail. The platform reports a failure as free text (Sora's `error_message`,
//! Veo's `error`, Kling's `message`, e.g. "Image contains photorealistic people…"); the model
//! catalog's `[failure_reasons]` rules class it as `people`, `policy` or `other`, so metrics and
//! the dashboard can count failures by a small, fixed set of reasons.

/// A failure's class. Fixed, so the metric's label set stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The image or prompt shows (real) people.
    People,
    /// A content-policy or moderation refusal.
    Policy,
    /// Anything else (timeouts, platform errors, no message).
    Other,
}

impl Reason {
    /// Every reason, in the order tables show them.
    pub const ALL: [Reason; 3] = [Reason::People, Reason::Policy, Reason::Other];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::People => "people",
            Reason::Policy => "policy",
            Reason::Other => "other",
        }
    }

    /// Parses a stored label; unknown text is `Other`.
    pub fn named(s: &str) -> Reason {
        match s {
            "people" => Reason::People,
            "policy" => Reason::Policy,
            _ => Reason::Other,
        }
    }

    /// Index into per-reason arrays (`ALL` order).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A failed generation: the platform's words and their class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The class the catalog's rules gave the message.
    pub reason: Reason,
    /// The platform's message (cut to `MAX_MESSAGE` characters); empty when it gave none.
    pub message: String,
}

/// Longest message kept with a record.
pub const MAX_MESSAGE: usize = 500;

/// The catalog's rules: a message containing any `people` phrase is `People`, else any `policy`
/// phrase `Policy`, else `Other` (phrases compared without case).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rules {
    /// Lower-cased phrases of the `people` class.
    pub people: Vec<String>,
    /// Lower-cased phrases of the `policy` class.
    pub policy: Vec<String>,
}

impl Rules {
    /// The class of a message.
    pub fn classify(&self, message: &str) -> Reason {
        let m = message.to_lowercase();
        if self.people.iter().any(|p| m.contains(p.as_str())) {
            Reason::People
        } else if self.policy.iter().any(|p| m.contains(p.as_str())) {
            Reason::Policy
        } else {
            Reason::Other
        }
    }

    /// The failure a failed status body describes.
    pub fn failure(&self, body: &serde_json::Value) -> Failure {
        let message = message_of(body).unwrap_or_default();
        Failure { reason: self.classify(&message), message }
    }
}

/// The platform's failure text in a status body: `error_message`, `error` (a string or an object
/// with a `message`), or `message`, the first that is a non-empty string.
pub fn message_of(body: &serde_json::Value) -> Option<String> {
    let text =
        |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).filter(|s| !s.trim().is_empty()).map(str::to_string);
    let found = text(body.get("error_message"))
        .or_else(|| text(body.get("error")))
        .or_else(|| text(body.get("error").and_then(|e| e.get("message"))))
        .or_else(|| text(body.get("message")))?;
    Some(found.chars().take(MAX_MESSAGE).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Rules {
        Rules {
            people: vec!["photorealistic people".into(), "real person".into()],
            policy: vec!["content policy".into(), "moderation".into()],
        }
    }

    #[test]
    fn messages_are_found_in_every_family_shape() {
        assert_eq!(
            message_of(&json!({"status": "failed", "error_message": "Image contains photorealistic people."}))
                .as_deref(),
            Some("Image contains photorealistic people.")
        );
        assert_eq!(message_of(&json!({"status": "failed", "error": "Blocked"})).as_deref(), Some("Blocked"));
        assert_eq!(
            message_of(&json!({"status": "failed", "error": {"message": "Timed out"}})).as_deref(),
            Some("Timed out")
        );
        assert_eq!(
            message_of(&json!({"status": "failed", "error_message": null, "message": "bad"})).as_deref(),
            Some("bad")
        );
        assert_eq!(message_of(&json!({"status": "failed", "error_message": "  "})), None);
        assert_eq!(message_of(&json!({"status": "failed"})), None);
        assert_eq!(message_of(&json!({"error_message": "x".repeat(2000)})).map(|m| m.len()), Some(MAX_MESSAGE));
    }

    #[test]
    fn classes_follow_the_rules_without_case() {
        let r = rules();
        assert_eq!(r.classify("Image contains PHOTOREALISTIC people. Please try again"), Reason::People);
        assert_eq!(r.classify("Refused by our Content Policy"), Reason::Policy);
        assert_eq!(r.classify("a real person and a content policy issue"), Reason::People);
        assert_eq!(r.classify("Internal error"), Reason::Other);
        assert_eq!(r.classify(""), Reason::Other);
        for reason in Reason::ALL {
            assert_eq!(Reason::named(reason.as_str()), reason);
            assert_eq!(Reason::ALL[reason.index()], reason);
        }
    }
}
