//! Tags every request and response: made for quick mode
//! (`proxy --ext headers.wasm`), where argument-less http-req and http-res
//! actions run on every message.
use moonbox_sdk::prelude::*;

fn init(ext: &mut Registrar, _args: &[String]) -> Result<(), String> {
    ext.action(
        "tag_request",
        &[Facility::HttpReq],
        0,
        |txn, _args| async move {
            txn.set_req_header("x-tagged", "yes");
            Ok(Verdict::Continue)
        },
    );
    ext.action(
        "tag_response",
        &[Facility::HttpRes],
        0,
        |txn, _args| async move {
            txn.set_res_header("x-served-by", "moonbox");
            Ok(Verdict::Continue)
        },
    );
    Ok(())
}

moonbox_sdk::export!(init);
