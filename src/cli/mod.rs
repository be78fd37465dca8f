//! The command lines of the three tools (clap derive), kept in the library so the binaries
//! stay thin and man pages / completions can be generated from the same definitions.
//! Shared here: host naming, logging setup, and the warning about secrets on argv.

pub mod chop;
pub mod logging;
pub mod slurp;
pub mod snap;
pub mod systemd;

/// How tableslurp and tablechop reach the backups and name their keys (tablesnap spells
/// some of these differently, as the original did: `--aws-token`, `-p/--prefix`).
#[derive(Debug, Clone, clap::Args)]
pub struct ReadSide {
    /// Session token
    #[arg(
        long = "token",
        visible_alias = "aws-token",
        env = "AWS_SECURITY_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Region [default: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1]
    #[arg(long = "aws-region", env = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// S3-compatible endpoint, e.g. http://127.0.0.1:3900
    #[arg(long = "endpoint-url", env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// String put before every key when backing up
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Separator between host name and path in keys
    #[arg(long = "keyname-separator", default_value = ":")]
    pub keyname_separator: String,
}

impl ReadSide {
    /// How to reach BUCKET with these flags and the given credentials (None: environment,
    /// then the instance role).
    pub fn store_options(
        &self,
        bucket: &str,
        key: Option<String>,
        secret: Option<String>,
    ) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            destination: bucket.to_string(),
            access_key: key,
            secret_key: secret,
            token: self.token.clone(),
            region: self.aws_region.clone(),
            endpoint: self.endpoint_url.clone(),
            ..Default::default()
        }
    }

    /// The key layout of host `name`.
    pub fn layout(&self, name: String) -> crate::layout::Layout {
        crate::layout::Layout::new(self.prefix.clone(), name, self.keyname_separator.clone())
    }
}

/// The package-wide spellings of the credential variables: every tool reads them, so one
/// `/etc/default/tablesnap` (or one Kubernetes Secret) serves all three.
pub const ENV_KEY: &str = "TABLESNAP_AWS_KEY";
/// See [`ENV_KEY`].
pub const ENV_SECRET: &str = "TABLESNAP_AWS_SECRET";

/// A credential: the flag (or the tool's own variable, read by clap), else the first of
/// `fallbacks` set to something non-empty (older spellings of the tool's own, then the
/// package-wide one: the more specific setting wins).
pub fn credential(flag: Option<String>, fallbacks: &[&str]) -> Option<String> {
    flag.filter(|v| !v.is_empty()).or_else(|| {
        fallbacks
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
    })
}

/// The clap definitions of every tool, for man pages and completions.
pub fn commands() -> Vec<clap::Command> {
    use clap::CommandFactory;
    vec![
        snap::SnapArgs::command(),
        slurp::Args::command(),
        chop::Args::command(),
    ]
}

/// The host's fully qualified name, as Python's `socket.getfqdn()` gives it: the canonical
/// name of the host name, falling back to the plain host name.
pub fn fqdn() -> String {
    let host = hostname();
    canonical_name(&host).unwrap_or(host)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; gethostname NUL-terminates on success.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn canonical_name(host: &str) -> Option<String> {
    use std::ffi::{CStr, CString};
    let c = CString::new(host).ok()?;
    // SAFETY: zeroed addrinfo is a valid hints value.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_flags = libc::AI_CANONNAME;
    hints.ai_family = libc::AF_UNSPEC;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C string, hints and out pointer; res freed below.
    let r = unsafe { libc::getaddrinfo(c.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if r != 0 || res.is_null() {
        return None;
    }
    // SAFETY: res is a valid list returned by getaddrinfo.
    let name = unsafe {
        let cn = (*res).ai_canonname;
        let n = (!cn.is_null()).then(|| CStr::from_ptr(cn).to_string_lossy().into_owned());
        libc::freeaddrinfo(res);
        n
    };
    name.filter(|n| !n.is_empty() && n != "localhost" && !n.starts_with("localhost."))
}

/// Warns when a secret was given on the command line, where `ps` shows it to every user.
/// `flags` are the option names that carry secrets, e.g. `["-s", "--aws-secret"]`.
pub fn warn_secrets_on_argv(args: &[String], flags: &[&str]) {
    for a in args.iter().skip(1) {
        let name = a.split('=').next().unwrap_or(a);
        if flags.contains(&name)
            || flags
                .iter()
                .any(|f| f.len() == 2 && a.starts_with(f) && a.len() > 2 && !a.starts_with("--"))
        {
            tracing::warn!(
                flag = name,
                "a secret was given on the command line, where any local user can read it (ps); \
                 prefer the environment (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or an instance role"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fqdn_is_not_empty() {
        assert!(!super::fqdn().is_empty());
    }
}
