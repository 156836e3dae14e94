//! Query strings, read with `form_urlencoded` (percent-decoding and `+` included) so no wing
//! splits one by hand.

/// The value of the first `name` parameter of `query`, decoded.
pub fn param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The parameter names of `query`, decoded, in order.
pub fn names(query: Option<&str>) -> Vec<String> {
    query.map(|q| form_urlencoded::parse(q.as_bytes()).map(|(k, _)| k.into_owned()).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_decoded_and_the_first_wins() {
        assert_eq!(param(Some("limit=10&offset=5"), "offset").as_deref(), Some("5"));
        assert_eq!(param(Some("month=2026-11&tenant=a%2Db&month=x"), "month").as_deref(), Some("2026-11"));
        assert_eq!(param(Some("tenant=a%2Db"), "tenant").as_deref(), Some("a-b"));
        assert_eq!(param(Some("flag"), "flag").as_deref(), Some(""));
        assert_eq!(param(None, "limit"), None);
        assert_eq!(names(Some("a=1&b&c=")), ["a", "b", "c"]);
    }
}
