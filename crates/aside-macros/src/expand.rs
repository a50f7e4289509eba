//! Checks the function and writes its cached version.

use proc_macro2::{Group, Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::visit::Visit;
use syn::{
    FnArg, GenericArgument, ItemFn, Lifetime, Pat, PathArguments, ReturnType, Type, TypeImplTrait,
    TypeReference,
};

use crate::options::Options;
use crate::template::{self, Scope};

/// What the function returns, and so which helper runs it.
enum Shape {
    /// `Result<T, E>`: `Ok` values cached.
    Result,
    /// `Result<Option<T>, E>`: `Ok(None)` cached as a negative entry.
    ResultOption,
    /// `Option<T>`: `None` cached as a negative entry.
    Option,
}

/// One argument.
struct Arg {
    name: Ident,
    /// `&T`: copied with `ToOwned` into the load, borrowed back there.
    borrowed: Option<Type>,
    mutable: bool,
}

pub fn expand(options: Options, mut func: ItemFn) -> syn::Result<TokenStream> {
    let sig = &func.sig.clone();
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "#[cached] works on `async fn`s only: the body runs as aside's loader, a future",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            "#[cached] does not support `unsafe fn`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "#[cached] does not support generic functions: a cached value has one type and \
             a key one layout; cache a non-generic function (one per type) that calls the \
             generic code",
        ));
    }
    let shape = shape(&sig.output, &sig.ident)?;

    let mut receiver = None;
    let mut args = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                if r.colon_token.is_some() || r.reference.is_none() {
                    return Err(syn::Error::new_spanned(
                        r,
                        "#[cached] methods take `&self` (cloned into the load, which runs in a \
                         task of its own)",
                    ));
                }
                if r.mutability.is_some() {
                    return Err(syn::Error::new_spanned(
                        r,
                        "#[cached] methods take `&self`, not `&mut self`: the body runs in a \
                         task of its own, on a clone of the receiver",
                    ));
                }
                receiver = Some(r.self_token.span);
            }
            FnArg::Typed(pt) => args.push(argument(&pt.pat, &pt.ty)?),
        }
    }

    if options.key.is_some()
        && let Some((lit, _)) = &options.version
    {
        return Err(syn::Error::new_spanned(
            lit,
            "`version` versions the key derived from the arguments; with `key = \"...\"`, \
             put the version in the template (`key = \"user:v2:{id}\"`)",
        ));
    }
    if let (Some(span), None) = (receiver, &options.key) {
        return Err(syn::Error::new(
            span,
            "a #[cached] method needs `key = \"...\"`: the receiver is never part of a derived \
             key, so name what identifies it and the arguments (`key = \"user:{self.tenant}:{id}\"`)",
        ));
    }

    let names: Vec<Ident> = args.iter().map(|a| a.name.clone()).collect();
    let scope = Scope {
        args: &names,
        has_self: receiver.is_some(),
        fn_name: &sig.ident,
    };
    let key = match &options.key {
        Some(lit) => {
            let key = template::key_expr(lit, &scope, "key")?;
            quote!(::core::option::Option::Some(#key))
        }
        None => {
            let name = sig.ident.to_string();
            let version = options.version.as_ref().map_or(1, |(_, v)| *v);
            quote! {
                ::aside::__private::FnKey::new(::core::module_path!(), #name, #version)
                    #(.arg(&#names))*
                    .finish()
            }
        }
    };
    let ttl = options.ttl.as_ref().map(
        |(lit, ms)| quote_spanned!(lit.span()=> .ttl(::core::time::Duration::from_millis(#ms))),
    );
    let tags = options
        .tags
        .iter()
        .map(|lit| template::tag_expr(lit, &scope).map(|t| quote!(.tag(#t))))
        .collect::<syn::Result<Vec<_>>>()?;

    // The body, moved into the load: `self` becomes a borrow of a clone of
    // the receiver, `&T` arguments borrows of owned copies. Only what the
    // body uses is copied.
    let mut body = func.block.to_token_stream();
    let mut before = TokenStream::new();
    let mut inside = TokenStream::new();
    if receiver.is_some() && mentions(&body, "self") {
        body = replace_self(body);
        let this = Ident::new("__aside_self", Span::call_site());
        before.extend(quote! {
            let __aside_receiver = <Self as ::core::clone::Clone>::clone(self);
        });
        inside.extend(quote!(let #this = &__aside_receiver;));
    }
    for (i, arg) in args.iter().enumerate() {
        let Some(ty) = &arg.borrowed else { continue };
        if !mentions(&body, &arg.name.to_string()) {
            continue;
        }
        let name = &arg.name;
        let owned = Ident::new(&format!("__aside_owned_{i}"), Span::mixed_site());
        let mutable = arg.mutable.then(|| quote!(mut));
        if arg.mutable {
            // The body mutates its own borrow (below), not the parameter.
            unmut_parameter(&mut func.sig, name);
        }
        before.extend(quote!(let #owned = ::std::borrow::ToOwned::to_owned(#name);));
        inside.extend(quote!(let #mutable #name: &#ty = ::std::borrow::Borrow::borrow(&#owned);));
    }

    let helper = match shape {
        Shape::Result => quote!(result),
        Shape::ResultOption => quote!(result_option),
        Shape::Option => quote!(option),
    };
    let cache = &options.cache;
    let ret = match &sig.output {
        ReturnType::Type(_, ty) => ty.to_token_stream(),
        ReturnType::Default => quote!(()),
    };
    let new_body = quote! {
        {
            let __aside_cache: &::aside::Cache = &(#cache);
            let __aside_key = #key;
            let __aside_options = ::aside::EntryOptions::new() #ttl #(#tags)*;
            #before
            ::aside::__private::#helper(__aside_cache, __aside_key, &__aside_options, move || {
                ::aside::__private::body::<#ret, _>(async move {
                    #inside
                    #body
                })
            })
            .await
        }
    };

    let ItemFn {
        attrs, vis, sig, ..
    } = func;
    Ok(quote! {
        #(#attrs)*
        #vis #sig #new_body
    })
}

/// The return type's shape, from its last path segment (`Result`, also
/// through aliases like `io::Result<T>`; `Option`).
fn shape(output: &ReturnType, name: &Ident) -> syn::Result<Shape> {
    let supported = "a #[cached] function returns `Result<T, E>` (`Ok` values cached), \
                     `Result<Option<T>, E>` or `Option<T>` (`None` cached as a negative entry)";
    let ty = match output {
        ReturnType::Type(_, ty) => ty,
        ReturnType::Default => {
            return Err(syn::Error::new_spanned(
                name,
                format!("{supported}; `{name}` returns `()`"),
            ));
        }
    };
    let first_arg = |ty: &Type, wanted: &str| -> Option<Type> {
        let Type::Path(p) = ty else { return None };
        let last = p.path.segments.last()?;
        if last.ident != wanted {
            return None;
        }
        let PathArguments::AngleBracketed(a) = &last.arguments else {
            return None;
        };
        match a.args.first()? {
            GenericArgument::Type(t) => Some(t.clone()),
            _ => None,
        }
    };
    if let Some(ok) = first_arg(ty, "Result") {
        return Ok(if first_arg(&ok, "Option").is_some() {
            Shape::ResultOption
        } else {
            Shape::Result
        });
    }
    if first_arg(ty, "Option").is_some() {
        return Ok(Shape::Option);
    }
    Err(syn::Error::new_spanned(
        ty,
        format!(
            "unsupported return type `{}`: {supported}",
            ty.to_token_stream()
        ),
    ))
}

fn argument(pat: &Pat, ty: &Type) -> syn::Result<Arg> {
    let Pat::Ident(id) = pat else {
        return Err(syn::Error::new_spanned(
            pat,
            "#[cached] needs named arguments (`point: Point`), not patterns: \
             destructure in the body",
        ));
    };
    if id.by_ref.is_some() || id.subpat.is_some() {
        return Err(syn::Error::new_spanned(
            pat,
            "#[cached] needs plain named arguments (`point: Point`), not patterns",
        ));
    }
    let mut check = TypeCheck::default();
    let borrowed = match ty {
        Type::Reference(r) if !is_static(r.lifetime.as_ref()) => {
            if r.mutability.is_some() {
                return Err(syn::Error::new_spanned(
                    ty,
                    "#[cached] does not support `&mut` arguments: the body runs in a task of \
                     its own, on owned copies of the arguments",
                ));
            }
            check.visit_type(&r.elem);
            Some((*r.elem).clone())
        }
        other => {
            check.visit_type(other);
            None
        }
    };
    if let Some(tokens) = check.impl_trait {
        return Err(syn::Error::new_spanned(
            tokens,
            "#[cached] does not support `impl Trait` arguments: the body runs in a task of \
             its own and the arguments make the key; use a concrete type",
        ));
    }
    if let Some(tokens) = check.borrow {
        return Err(syn::Error::new_spanned(
            tokens,
            "#[cached] arguments must be moved into the load, which runs in a task of its \
             own: use an owned type, or a plain reference `&T` (copied with `ToOwned`), \
             with no borrow inside",
        ));
    }
    Ok(Arg {
        name: id.ident.clone(),
        borrowed,
        mutable: id.mutability.is_some(),
    })
}

/// Drops `mut` from parameter `name` of `sig`.
fn unmut_parameter(sig: &mut syn::Signature, name: &Ident) {
    for input in &mut sig.inputs {
        if let FnArg::Typed(pt) = input
            && let Pat::Ident(id) = &mut *pt.pat
            && id.ident == *name
        {
            id.mutability = None;
        }
    }
}

fn is_static(lifetime: Option<&Lifetime>) -> bool {
    lifetime.is_some_and(|l| l.ident == "static")
}

/// Finds `impl Trait` and non-`'static` borrows in a type.
#[derive(Default)]
struct TypeCheck {
    impl_trait: Option<TokenStream>,
    borrow: Option<TokenStream>,
}

impl<'ast> Visit<'ast> for TypeCheck {
    fn visit_type_impl_trait(&mut self, t: &'ast TypeImplTrait) {
        self.impl_trait.get_or_insert_with(|| t.to_token_stream());
    }

    fn visit_type_reference(&mut self, r: &'ast TypeReference) {
        if !is_static(r.lifetime.as_ref()) {
            self.borrow.get_or_insert_with(|| r.to_token_stream());
        }
        syn::visit::visit_type_reference(self, r);
    }

    fn visit_lifetime(&mut self, l: &'ast Lifetime) {
        if l.ident != "static" {
            self.borrow.get_or_insert_with(|| l.to_token_stream());
        }
    }
}

/// Whether `tokens` use the identifier `name`: as a token, or captured by
/// a format string (`"{name}"`).
fn mentions(tokens: &TokenStream, name: &str) -> bool {
    tokens.clone().into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == name,
        TokenTree::Group(g) => mentions(&g.stream(), name),
        TokenTree::Literal(l) => {
            let text = l.to_string();
            text.contains(&format!("{{{name}}}")) || text.contains(&format!("{{{name}:"))
        }
        TokenTree::Punct(_) => false,
    })
}

/// Replaces the `self` value (not `self::` paths) with `__aside_self`.
fn replace_self(tokens: TokenStream) -> TokenStream {
    let trees: Vec<TokenTree> = tokens.into_iter().collect();
    let mut out = Vec::with_capacity(trees.len());
    for (i, t) in trees.iter().enumerate() {
        match t {
            TokenTree::Ident(id) if id == "self" && !starts_path(&trees[i + 1..]) => {
                out.push(TokenTree::Ident(Ident::new("__aside_self", id.span())));
            }
            TokenTree::Group(g) => {
                let mut group = Group::new(g.delimiter(), replace_self(g.stream()));
                group.set_span(g.span());
                out.push(TokenTree::Group(group));
            }
            other => out.push(other.clone()),
        }
    }
    out.into_iter().collect()
}

/// Whether the next tokens are `::`.
fn starts_path(rest: &[TokenTree]) -> bool {
    matches!(rest, [TokenTree::Punct(a), TokenTree::Punct(b), ..] if a.as_char() == ':' && b.as_char() == ':')
}
