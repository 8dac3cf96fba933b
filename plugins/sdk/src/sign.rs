//! Signing schemes used by webhook platforms.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// The `webhook-signature` value of the Standard Webhooks scheme:
/// `v1,base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`, where the key is
/// the base64-decoded secret after its `whsec_` prefix.
pub fn standard_webhooks(
    secret: &str,
    id: &str,
    timestamp: u64,
    body: &[u8],
) -> Result<String, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = BASE64.decode(encoded).map_err(|e| {
        format!("signing secret is not base64 (after an optional whsec_ prefix): {e}")
    })?;
    let mut message = format!("{id}.{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    Ok(format!("v1,{}", BASE64.encode(hmac_sha256(&key, &message))))
}

/// GitHub's `X-Hub-Signature-256` value: `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn github(secret: &str, body: &[u8]) -> String {
    let digest = hmac_sha256(secret.as_bytes(), body);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// DingTalk's `sign` query value: `urlencode(base64(HMAC-SHA256(key =
/// secret, message = "{timestamp_ms}\n{secret}")))`.
pub fn dingtalk(secret: &str, timestamp_ms: u64) -> String {
    let message = format!("{timestamp_ms}\n{secret}");
    let signature = BASE64.encode(hmac_sha256(secret.as_bytes(), message.as_bytes()));
    crate::form::encode_component(&signature)
}

/// Feishu/Lark's `sign` body field: `base64(HMAC-SHA256(key =
/// "{timestamp_s}\n{secret}", message = ""))` — the reverse of DingTalk.
pub fn feishu(secret: &str, timestamp_s: u64) -> String {
    let key = format!("{timestamp_s}\n{secret}");
    BASE64.encode(hmac_sha256(key.as_bytes(), b""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn dingtalk_vector() {
        assert_eq!(
            super::dingtalk("SECtest", 1_700_000_000_000),
            "aZLLrriXgn05YbwaGR7knYsLeJADjr9NwLaNNKpxh4g%3D"
        );
    }

    #[test]
    fn feishu_vector() {
        assert_eq!(
            super::feishu("SECtest", 1_700_000_000),
            "G7XpBpG8NgG02fJOAhX6FRAObIljmFoxVReo8I62pEk="
        );
    }

    #[test]
    fn standard_webhooks_vector() {
        let sig = super::standard_webhooks(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn github_vector() {
        assert_eq!(
            super::github("It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
