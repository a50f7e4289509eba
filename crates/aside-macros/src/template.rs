//! Key and tag templates: `"user:{id}"`, `"org:{self.org}:v{version}"`.
//!
//! A template is split on `:` into parts; each part becomes one
//! `aside::Key::part` (escaped), so a `:` inside an
//! argument's value cannot move a part boundary. A part holds at most one
//! placeholder: with two, `"{a}{b}"` would give `("ab", "c")` and
//! `("a", "bc")` the same key.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Ident, LitStr};

/// One `:`-separated part: literal text around at most one placeholder.
struct Part {
    before: String,
    /// The placeholder's path (`id`, `self.org.id`) and the text after it.
    arg: Option<(Vec<String>, String)>,
}

/// The names a placeholder may start with.
pub struct Scope<'a> {
    pub args: &'a [Ident],
    pub has_self: bool,
    pub fn_name: &'a Ident,
}

/// Parses `lit` and returns an expression of type `::aside::Key`.
pub fn key_expr(lit: &LitStr, scope: &Scope<'_>, what: &str) -> syn::Result<TokenStream> {
    let parts = parse(lit, scope, what)?;
    if parts.iter().all(|p| p.arg.is_none()) {
        // No placeholder: the key is known now, escaped as `Key::part` would.
        let joined: Vec<String> = parts.iter().map(|p| escape(&p.before)).collect();
        let text = LitStr::new(&joined.join(":"), lit.span());
        return Ok(quote!(::aside::Key::from(#text)));
    }
    let mut parts = parts.iter().map(|p| part_expr(p, lit.span()));
    let first = parts.next().unwrap_or_default();
    Ok(quote!(::aside::Key::new(#first) #(.part(#parts))*))
}

/// Parses `lit` and returns an expression of type `String` (a tag).
pub fn tag_expr(lit: &LitStr, scope: &Scope<'_>) -> syn::Result<TokenStream> {
    let parts = parse(lit, scope, "tag")?;
    if parts.iter().all(|p| p.arg.is_none()) {
        let joined: Vec<String> = parts.iter().map(|p| escape(&p.before)).collect();
        let text = LitStr::new(&joined.join(":"), lit.span());
        return Ok(quote!(#text));
    }
    let key = key_expr(lit, scope, "tag")?;
    Ok(quote!(::std::string::ToString::to_string(&#key)))
}

fn part_expr(part: &Part, span: Span) -> TokenStream {
    match &part.arg {
        None => {
            let text = LitStr::new(&part.before, span);
            quote!(#text)
        }
        Some((path, after)) => {
            let expr = path_expr(path, span);
            if part.before.is_empty() && after.is_empty() {
                quote!(&#expr)
            } else {
                let fmt = format!(
                    "{}{{}}{}",
                    part.before.replace('{', "{{").replace('}', "}}"),
                    after.replace('{', "{{").replace('}', "}}")
                );
                let fmt = LitStr::new(&fmt, span);
                quote!(::core::format_args!(#fmt, #expr))
            }
        }
    }
}

fn path_expr(path: &[String], span: Span) -> TokenStream {
    let mut names = path.iter();
    let root = match names.next().map(String::as_str) {
        Some("self") => quote!(self),
        Some(name) => {
            let id = Ident::new(name, span);
            quote!(#id)
        }
        None => TokenStream::new(),
    };
    let fields = names.map(|f| match f.parse::<u32>() {
        Ok(i) => {
            let index = syn::Index { index: i, span };
            quote!(.#index)
        }
        Err(_) => {
            let id = Ident::new(f, span);
            quote!(.#id)
        }
    });
    quote!(#root #(#fields)*)
}

/// The escaping of `aside::Key::part`: `%` and `:` percent-encoded.
fn escape(s: &str) -> String {
    s.replace('%', "%25").replace(':', "%3A")
}

fn parse(lit: &LitStr, scope: &Scope<'_>, what: &str) -> syn::Result<Vec<Part>> {
    let text = lit.value();
    let err = |msg: String| syn::Error::new_spanned(lit, msg);
    if text.is_empty() {
        return Err(err(format!("the {what} template is empty")));
    }
    let mut parts = vec![Part {
        before: String::new(),
        arg: None,
    }];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let Some(part) = parts.last_mut() else {
            break;
        };
        let text_slot = match &mut part.arg {
            Some((_, after)) => after,
            None => &mut part.before,
        };
        match c {
            ':' => parts.push(Part {
                before: String::new(),
                arg: None,
            }),
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text_slot.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text_slot.push('}');
            }
            '}' => {
                return Err(err(format!(
                    "unmatched `}}` in the {what} template (write `}}}}` for a literal brace)"
                )));
            }
            '{' => {
                let mut inner = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => inner.push(c),
                        None => {
                            return Err(err(format!(
                                "unclosed `{{` in the {what} template (write `{{{{` for a literal brace)"
                            )));
                        }
                    }
                }
                if part.arg.is_some() {
                    return Err(err(format!(
                        "two placeholders in one part of the {what} template: separate them \
                         with `:` (`\"{{a}}:{{b}}\"`), or `(\"ab\", \"c\")` and `(\"a\", \"bc\")` \
                         would make the same {what}"
                    )));
                }
                let path = placeholder(&inner, scope).map_err(err)?;
                part.arg = Some((path, String::new()));
            }
            c => text_slot.push(c),
        }
    }
    Ok(parts)
}

/// Checks one placeholder, `{name}` or `{name.field}`, against the scope.
fn placeholder(inner: &str, scope: &Scope<'_>) -> Result<Vec<String>, String> {
    let path: Vec<String> = inner.split('.').map(|s| s.trim().to_owned()).collect();
    let valid_ident =
        |s: &str| syn::parse_str::<Ident>(s).is_ok() || (s == "self") || s.parse::<u32>().is_ok();
    if inner.contains(':') || path.iter().any(|s| s.is_empty() || !valid_ident(s)) {
        return Err(format!(
            "`{{{inner}}}`: a placeholder names an argument or a field of one \
             (`{{id}}`, `{{user.id}}`, `{{self.tenant}}`), with no format spec"
        ));
    }
    let root = path[0].as_str();
    let known = scope.args.iter().any(|a| a == root) || (root == "self" && scope.has_self);
    if !known {
        let mut names: Vec<String> = scope.args.iter().map(ToString::to_string).collect();
        if scope.has_self {
            names.insert(0, "self".into());
        }
        let list = if names.is_empty() {
            "it has none".to_owned()
        } else {
            format!("they are: {}", names.join(", "))
        };
        return Err(format!(
            "`{{{inner}}}` names no argument of `{}` ({list})",
            scope.fn_name
        ));
    }
    Ok(path)
}
