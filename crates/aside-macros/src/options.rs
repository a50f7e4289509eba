//! The attribute's options: `cache = EXPR, key = "...", ttl = "...",
//! tags = [...], version = N`.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, LitInt, LitStr, Meta, Token};

/// What the attribute was given.
pub struct Options {
    pub cache: Expr,
    pub key: Option<LitStr>,
    /// The literal and its value in milliseconds.
    pub ttl: Option<(LitStr, u64)>,
    pub tags: Vec<LitStr>,
    /// The literal and its value.
    pub version: Option<(LitInt, u32)>,
}

const KNOWN: &str = "`cache`, `key`, `ttl`, `tags`, `version`";

impl Options {
    pub fn parse(args: TokenStream) -> syn::Result<Self> {
        let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(args)?;
        let mut cache = None;
        let mut key = None;
        let mut ttl = None;
        let mut tags = None;
        let mut version = None;
        for meta in metas {
            let nv = match meta {
                Meta::NameValue(nv) => nv,
                other => {
                    return Err(syn::Error::new_spanned(
                        &other,
                        format!("expected `name = value` (options: {KNOWN}), e.g. `cache = CACHE`"),
                    ));
                }
            };
            let name = nv.path.get_ident().map(ToString::to_string);
            let slot_taken = |taken: bool| {
                if taken {
                    Err(syn::Error::new_spanned(
                        &nv.path,
                        "this option is given twice",
                    ))
                } else {
                    Ok(())
                }
            };
            match name.as_deref() {
                Some("cache") => {
                    slot_taken(cache.is_some())?;
                    cache = Some(nv.value);
                }
                Some("key") => {
                    slot_taken(key.is_some())?;
                    key = Some(string(&nv.value, "key", "\"user:{id}\"")?);
                }
                Some("ttl") => {
                    slot_taken(ttl.is_some())?;
                    let lit = string(&nv.value, "ttl", "\"5m\"")?;
                    let ms = parse_ttl(&lit)?;
                    ttl = Some((lit, ms));
                }
                Some("tags") => {
                    slot_taken(tags.is_some())?;
                    tags = Some(tag_list(&nv.value)?);
                }
                Some("version") => {
                    slot_taken(version.is_some())?;
                    version = Some(version_number(&nv.value)?);
                }
                _ => {
                    return Err(syn::Error::new_spanned(
                        &nv.path,
                        format!("unknown option of #[cached]; the options are {KNOWN}"),
                    ));
                }
            }
        }
        let Some(cache) = cache else {
            return Err(syn::Error::new(
                Span::call_site(),
                "#[cached] needs `cache = ...`: the cache to read and fill, an expression \
                 that derefs to `aside::Cache` (a `static CACHE: LazyLock<Cache>`, \
                 `self.cache`, a function call)",
            ));
        };
        Ok(Options {
            cache,
            key,
            ttl,
            tags: tags.unwrap_or_default(),
            version,
        })
    }
}

fn string(value: &Expr, option: &str, example: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{option}` takes a string literal, e.g. `{option} = {example}`"),
        )),
    }
}

fn tag_list(value: &Expr) -> syn::Result<Vec<LitStr>> {
    let Expr::Array(array) = value else {
        return Err(syn::Error::new_spanned(
            value,
            "`tags` takes a list of string literals, e.g. `tags = [\"users\", \"org:{org}\"]`",
        ));
    };
    array
        .elems
        .iter()
        .map(|e| string(e, "tags", "[\"users\"]"))
        .collect()
}

fn version_number(value: &Expr) -> syn::Result<(LitInt, u32)> {
    if let Expr::Lit(ExprLit {
        lit: Lit::Int(i), ..
    }) = value
        && let Ok(n) = i.base10_parse::<u32>()
    {
        return Ok((i.clone(), n));
    }
    Err(syn::Error::new_spanned(
        value,
        "`version` takes a whole number, e.g. `version = 2`",
    ))
}

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"`, or several of them in a row
/// (`"1h30m"`), in milliseconds.
fn parse_ttl(lit: &LitStr) -> syn::Result<u64> {
    let text = lit.value();
    let invalid = || {
        syn::Error::new_spanned(
            lit,
            format!(
                "invalid ttl {text:?}: write a number and a unit (ms, s, m, h, d), \
                 e.g. \"250ms\", \"30s\", \"5m\", \"1h\", \"1h30m\""
            ),
        )
    };
    let mut total: u64 = 0;
    let mut rest = text.as_str();
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(invalid());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let ms_per = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(invalid()),
        };
        rest = &rest[unit..];
        total = n
            .checked_mul(ms_per)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(invalid)?;
    }
    if total == 0 {
        return Err(syn::Error::new_spanned(
            lit,
            "the ttl must be longer than zero",
        ));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ttl(s: &str) -> Option<u64> {
        parse_ttl(&LitStr::new(s, Span::call_site())).ok()
    }

    #[test]
    fn ttl_literals() {
        assert_eq!(ttl("250ms"), Some(250));
        assert_eq!(ttl("30s"), Some(30_000));
        assert_eq!(ttl("5m"), Some(300_000));
        assert_eq!(ttl("1h"), Some(3_600_000));
        assert_eq!(ttl("1d"), Some(86_400_000));
        assert_eq!(ttl("1h30m"), Some(5_400_000));
        for bad in [
            "",
            "5",
            "m",
            "5 m",
            "5min",
            "-5s",
            "0s",
            "1.5h",
            "99999999999999999999s",
        ] {
            assert_eq!(ttl(bad), None, "{bad:?}");
        }
    }
}
