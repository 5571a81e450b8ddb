//! Why a native-tls handshake failed ([`TlsFailure`]), from the numbers the platform's TLS
//! library gives, never from its wording: the wording differs between OpenSSL versions,
//! Security.framework and SChannel, and Windows translates it.
//!
//! native-tls keeps those numbers private. On OpenSSL the error stack is the error's source
//! (reason codes, read through the `openssl` crate), but the X509 verify result, the OSStatus
//! (macOS) and the Win32 error (Windows) show only in the error's `Debug` form: they are read
//! from there as numbers, by the name of the field that holds them. Whatever this cannot place
//! is [`TlsFailure::Other`]; the error itself stays the `source` of [`Error::Tls`](
//! crate::Error::Tls), so nothing is lost.

use crate::error::TlsFailure;

/// Why `err` (a failed native-tls handshake) failed.
pub(crate) fn classify(err: &native_tls::Error) -> TlsFailure {
    backend::classify(err)
}

/// The integer right after `field` in `text` (a `Debug` rendering), if there is one.
fn number_after(text: &str, field: &str) -> Option<i64> {
    let rest = &text[text.find(field)? + field.len()..];
    let end = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].parse().ok()
}

/// OpenSSL, on every platform but Apple's and Windows (as in native-tls).
#[cfg(not(any(target_os = "windows", target_vendor = "apple")))]
mod backend {
    use std::error::Error as _;

    use openssl::error::ErrorStack;
    use openssl_sys as ffi;

    use super::number_after;
    use crate::error::TlsFailure;

    /// `ERR_LIB_SSL` (err.h): errors of libssl, whose reasons follow.
    const ERR_LIB_SSL: i32 = 20;
    // Reasons (sslerr.h; the same numbers in OpenSSL 1.1 and 3.x) that say the peer does not
    // speak TLS: it answered with something that is not a TLS record.
    const SSL_R_HTTP_REQUEST: i32 = 156;
    const SSL_R_PACKET_LENGTH_TOO_LONG: i32 = 198;
    const SSL_R_WRONG_VERSION_NUMBER: i32 = 267;
    /// The peer closed TCP in the middle of the handshake (OpenSSL 3).
    const SSL_R_UNEXPECTED_EOF_WHILE_READING: i32 = 294;

    pub(super) fn classify(err: &native_tls::Error) -> TlsFailure {
        let debug = format!("{err:?}");
        // The certificate check's result, kept by native-tls beside the SSL error
        // (`X509VerifyResult { code: 62, error: "hostname mismatch" }`).
        match number_after(&debug, "X509VerifyResult { code: ").map(i32::try_from) {
            Some(Ok(ffi::X509_V_OK)) | None => {}
            Some(Ok(code)) => return verify_failure(code),
            Some(Err(_)) => return TlsFailure::Other,
        }
        // What went wrong in the handshake itself: the reasons on OpenSSL's error stack.
        if let Some(stack) = err.source().and_then(|s| s.downcast_ref::<ErrorStack>()) {
            for e in stack.errors() {
                if e.library_code() != ERR_LIB_SSL {
                    continue;
                }
                match e.reason_code() {
                    SSL_R_HTTP_REQUEST
                    | SSL_R_PACKET_LENGTH_TOO_LONG
                    | SSL_R_WRONG_VERSION_NUMBER => return TlsFailure::NotTls,
                    SSL_R_UNEXPECTED_EOF_WHILE_READING => return TlsFailure::ClosedDuringHandshake,
                    _ => {}
                }
            }
            return TlsFailure::Other;
        }
        // `SSL_ERROR_SYSCALL` with neither an error stack nor an I/O error behind it: the
        // socket reached its end (how OpenSSL 1.1, and 3.x without strict EOF, say it).
        let syscall = i64::from(openssl::ssl::ErrorCode::SYSCALL.as_raw());
        if err.source().is_none() && number_after(&debug, "code: ErrorCode(") == Some(syscall) {
            return TlsFailure::ClosedDuringHandshake;
        }
        TlsFailure::Other
    }

    /// What an X509 verify result (`X509_V_ERR_*`, x509_vfy.h) says.
    pub(super) fn verify_failure(code: i32) -> TlsFailure {
        match code {
            ffi::X509_V_ERR_HOSTNAME_MISMATCH | ffi::X509_V_ERR_IP_ADDRESS_MISMATCH => {
                TlsFailure::HostnameMismatch
            }
            ffi::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
            | ffi::X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN => TlsFailure::SelfSigned,
            ffi::X509_V_ERR_CERT_HAS_EXPIRED | ffi::X509_V_ERR_CERT_NOT_YET_VALID => {
                TlsFailure::Expired
            }
            ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
            | ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
            | ffi::X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
            | ffi::X509_V_ERR_CERT_UNTRUSTED => TlsFailure::UntrustedIssuer,
            _ => TlsFailure::Other,
        }
    }
}

/// Security.framework (macOS, iOS): an `OSStatus`, from the trust evaluation
/// (`SecTrustEvaluateWithError`) or from Secure Transport.
#[cfg(target_vendor = "apple")]
mod backend {
    use super::number_after;
    use crate::error::TlsFailure;

    // SecBase.h: the trust evaluation's verdicts.
    const ERR_SEC_HOST_NAME_MISMATCH: i64 = -67602;
    const ERR_SEC_CERTIFICATE_EXPIRED: i64 = -67818;
    const ERR_SEC_CERTIFICATE_NOT_VALID_YET: i64 = -67819;
    /// The chain leads to no trusted root; also what a self-signed certificate gets, which
    /// Security.framework does not tell apart.
    const ERR_SEC_NOT_TRUSTED: i64 = -67843;
    const ERR_SEC_CREATE_CHAIN_FAILED: i64 = -25318;
    // SecureTransport.h.
    const ERR_SSL_PROTOCOL: i64 = -9800;
    const ERR_SSL_CLOSED_GRACEFUL: i64 = -9805;
    const ERR_SSL_CLOSED_ABORT: i64 = -9806;
    const ERR_SSL_X_CERT_CHAIN_INVALID: i64 = -9807;
    const ERR_SSL_UNKNOWN_ROOT_CERT: i64 = -9812;
    const ERR_SSL_NO_ROOT_CERT: i64 = -9813;
    const ERR_SSL_CERT_EXPIRED: i64 = -9814;
    const ERR_SSL_CERT_NOT_YET_VALID: i64 = -9815;
    const ERR_SSL_CLOSED_NO_NOTIFY: i64 = -9816;
    const ERR_SSL_HOST_NAME_MISMATCH: i64 = -9843;
    const ERR_SSL_RECORD_OVERFLOW: i64 = -9847;

    pub(super) fn classify(err: &native_tls::Error) -> TlsFailure {
        // security-framework's error: `Error { code: -67602, message: "..." }`.
        number_after(&format!("{err:?}"), "code: ").map_or(TlsFailure::Other, status_failure)
    }

    pub(super) fn status_failure(status: i64) -> TlsFailure {
        match status {
            ERR_SEC_HOST_NAME_MISMATCH | ERR_SSL_HOST_NAME_MISMATCH => TlsFailure::HostnameMismatch,
            ERR_SEC_CERTIFICATE_EXPIRED
            | ERR_SEC_CERTIFICATE_NOT_VALID_YET
            | ERR_SSL_CERT_EXPIRED
            | ERR_SSL_CERT_NOT_YET_VALID => TlsFailure::Expired,
            ERR_SEC_NOT_TRUSTED
            | ERR_SEC_CREATE_CHAIN_FAILED
            | ERR_SSL_X_CERT_CHAIN_INVALID
            | ERR_SSL_UNKNOWN_ROOT_CERT
            | ERR_SSL_NO_ROOT_CERT => TlsFailure::UntrustedIssuer,
            // A record that is not TLS (an HTTP answer, most often).
            ERR_SSL_PROTOCOL | ERR_SSL_RECORD_OVERFLOW => TlsFailure::NotTls,
            ERR_SSL_CLOSED_GRACEFUL | ERR_SSL_CLOSED_ABORT | ERR_SSL_CLOSED_NO_NOTIFY => {
                TlsFailure::ClosedDuringHandshake
            }
            _ => TlsFailure::Other,
        }
    }
}

/// SChannel (Windows): a Win32 error (an `HRESULT`) in an `io::Error`, from the certificate
/// chain policy check or from SChannel itself.
#[cfg(target_os = "windows")]
mod backend {
    use super::number_after;
    use crate::error::TlsFailure;

    // winerror.h, as the `i32` an `io::Error` holds.
    const CERT_E_EXPIRED: i64 = 0x800B_0101_u32 as i32 as i64;
    /// The chain leads to no trusted root; also what a self-signed certificate gets, which
    /// the chain policy does not tell apart.
    const CERT_E_UNTRUSTEDROOT: i64 = 0x800B_0109_u32 as i32 as i64;
    const CERT_E_CHAINING: i64 = 0x800B_010A_u32 as i32 as i64;
    const CERT_E_CN_NO_MATCH: i64 = 0x800B_010F_u32 as i32 as i64;
    const SEC_E_INVALID_TOKEN: i64 = 0x8009_0308_u32 as i32 as i64;
    const SEC_E_WRONG_PRINCIPAL: i64 = 0x8009_0322_u32 as i32 as i64;
    const SEC_E_UNTRUSTED_ROOT: i64 = 0x8009_0325_u32 as i32 as i64;
    const SEC_E_ILLEGAL_MESSAGE: i64 = 0x8009_0326_u32 as i32 as i64;
    const SEC_E_CERT_EXPIRED: i64 = 0x8009_0328_u32 as i32 as i64;

    pub(super) fn classify(err: &native_tls::Error) -> TlsFailure {
        let debug = format!("{err:?}");
        // An OS error: `Os { code: -2146762481, kind: Uncategorized, message: "..." }`.
        if let Some(code) = number_after(&debug, "Os { code: ") {
            return code_failure(code);
        }
        // The peer closed TCP during the handshake: schannel says so with an error kind,
        // `Custom { kind: UnexpectedEof, error: "..." }`.
        if debug.contains("kind: UnexpectedEof") {
            return TlsFailure::ClosedDuringHandshake;
        }
        TlsFailure::Other
    }

    pub(super) fn code_failure(code: i64) -> TlsFailure {
        match code {
            CERT_E_CN_NO_MATCH | SEC_E_WRONG_PRINCIPAL => TlsFailure::HostnameMismatch,
            CERT_E_EXPIRED | SEC_E_CERT_EXPIRED => TlsFailure::Expired,
            CERT_E_UNTRUSTEDROOT | CERT_E_CHAINING | SEC_E_UNTRUSTED_ROOT => {
                TlsFailure::UntrustedIssuer
            }
            // What SChannel makes of an answer that is not a TLS record.
            SEC_E_INVALID_TOKEN | SEC_E_ILLEGAL_MESSAGE => TlsFailure::NotTls,
            _ => TlsFailure::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_after_their_field_name_signed_and_whole() {
        // The renderings each backend's classification reads: native-tls over OpenSSL,
        // security-framework's error, and an OS `io::Error` (SChannel's), formatted here by
        // std as it is on Windows.
        let openssl = "Ssl(Error { code: ErrorCode(1), cause: Some(Ssl(ErrorStack([Error { \
                       code: 167772294, library: \"SSL routines\" }]))) }, X509VerifyResult { \
                       code: 62, error: \"hostname mismatch\" })";
        assert_eq!(number_after(openssl, "X509VerifyResult { code: "), Some(62));
        assert_eq!(number_after(openssl, "code: ErrorCode("), Some(1));
        let apple = "Error { code: -67602, message: \"“localhost” does not match\" }";
        assert_eq!(number_after(apple, "code: "), Some(-67602));
        let os = format!("{:?}", std::io::Error::from_raw_os_error(-2146762481));
        assert!(os.starts_with("Os { code: "), "{os}");
        assert_eq!(number_after(&os, "Os { code: "), Some(-2146762481));
        // Nothing after the field, or no field at all.
        assert_eq!(number_after("code: x", "code: "), None);
        assert_eq!(number_after("code: -", "code: "), None);
        assert_eq!(number_after("nothing", "code: "), None);
        assert_eq!(number_after("code: 12", "code: "), Some(12));
    }

    #[cfg(not(any(target_os = "windows", target_vendor = "apple")))]
    #[test]
    fn openssl_verify_results_have_their_failure() {
        use openssl_sys as ffi;
        for (code, failure) in [
            (
                ffi::X509_V_ERR_HOSTNAME_MISMATCH,
                TlsFailure::HostnameMismatch,
            ),
            (
                ffi::X509_V_ERR_IP_ADDRESS_MISMATCH,
                TlsFailure::HostnameMismatch,
            ),
            (
                ffi::X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT,
                TlsFailure::SelfSigned,
            ),
            (ffi::X509_V_ERR_CERT_HAS_EXPIRED, TlsFailure::Expired),
            (ffi::X509_V_ERR_CERT_NOT_YET_VALID, TlsFailure::Expired),
            (
                ffi::X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
                TlsFailure::UntrustedIssuer,
            ),
            (ffi::X509_V_ERR_CERT_REVOKED, TlsFailure::Other),
        ] {
            assert_eq!(backend::verify_failure(code), failure, "{code}");
        }
    }
}
