"""Success and error messages are the original service's texts (tapis-project/pods_service, service/api_*.py,
models_pods.py, auth.py), issue 10 item 4. Where we say more than the original (which user, which level, which
status), the original's text comes first and ours follows, so ``original in message`` holds for clients and
tests that look for it.

``MESSAGES`` is the table: operation, case, the original's text. ``test_messages_are_the_originals`` drives
a real server through every case and checks each message against it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from openpods.api.routers import pod_runtime

IMAGE = "localhost/openpods-test/http"

# (operation, case, original text) — the original's text is a prefix of ours, or equal.
MESSAGES: list[tuple[str, str, str]] = [
    # pods
    ("list_pods", "ok", "Pods retrieved successfully."),
    ("create_pod", "ok", "Pod created successfully."),
    ("get_pod", "ok", "Pod retrieved successfully."),
    ("get_pod", "unknown pod (404)", "Pod with identifier pod_id: '{pod}x' not found"),
    ("update_pod", "ok", "Pod updated successfully."),
    ("update_pod", "no change (200, status error)",
     "Incoming data made no changes to pod. Is incoming data equal to current data?"),
    ("delete_pod", "ok", "Pod successfully deleted."),
    ("get_derived_pod", "ok", "Final derived pod retrieved successfully."),
    ("get_pod_credentials", "ok", "The request was successful."),
    ("get_pod_logs", "ok", "Pod logs retrieved successfully."),
    ("get_pod_permissions", "ok", "Pod permissions retrieved successfully."),
    ("set_pod_permission", "ok", "Pod permissions updated successfully."),
    ("set_pod_permission", "no ADMIN left (409)",
     "Operation would result in pod with no users in ADMIN role. Rolling back."),
    ("delete_pod_permission", "ok", "Pod permission deleted successfully."),
    ("delete_pod_permission", "no such permission (404)",
     "Could not find permission for pod with username nobody when deleting permission"),
    ("stop_pod", "ok", "Updated pod's status_requested to OFF."),
    ("start_pod", "ok", "Updated pod's status_requested to ON and requested pod."),
    ("start_pod", "not stopped (409)",
     "Pod must be in 'STOPPED' status to run 'start_pod'. Please run 'stop_pod' or 'restart_pod' instead."),
    ("restart_pod", "ok", "Updated pod's status_requested to RESTART."),
    ("save_pod_as_template_tag", "ok", "Template tag added successfully."),
    ("any pod endpoint", "level too low (403)", "Not authorized -- you do not have access to this endpoint."),
    ("create_pod", "description not ASCII (400)", "description field may only contain ASCII characters."),
    ("create_pod", "description too long (400)",
     "description field must be less than 255 characters. Inputted length: 300"),
    # volumes
    ("list_volumes", "ok", "Volumes retrieved successfully."),
    ("create_volume", "ok", "Volume created successfully."),
    ("get_volume", "ok", "Volume retrieved successfully."),
    ("update_volume", "ok", "Volume updated successfully."),
    ("update_volume", "no change",
     "Incoming data made no changes to volume. Is incoming data equal to current data?"),
    ("delete_volume", "ok", "Volume successfully deleted."),
    ("list_volume_files", "ok", "Volume file listing retrieved successfully."),
    ("upload_to_volume", "ok", "Volume file upload successful."),
    ("get_volume_permissions", "ok", "Volume permissions retrieved successfully."),
    ("set_volume_permission", "ok", "Volume permissions updated successfully."),
    ("delete_volume_permission", "ok", "Volume permission deleted successfully."),
    ("delete_volume_permission", "no such permission (404)",
     "Could not find permission for volume with username nobody when deleting permission"),
    ("get_volume", "unknown volume (404)", "Volume with identifier volume_id: 'novolume' not found"),
    # snapshots
    ("list_snapshots", "ok", "Snapshots retrieved successfully."),
    ("create_snapshot", "ok", "Snapshot created successfully."),
    ("get_snapshot", "ok", "Snapshot retrieved successfully."),
    ("update_snapshot", "ok", "Snapshot updated successfully."),
    ("update_snapshot", "no change",
     "Incoming data made no changes to snapshot. Is incoming data equal to current data?"),
    ("delete_snapshot", "ok", "Snapshot successfully deleted."),
    ("list_snapshot_files", "ok", "Snapshot file listing retrieved successfully."),
    ("get_snapshot_permissions", "ok", "Snapshot permissions retrieved successfully."),
    ("set_snapshot_permission", "ok", "Snapshot permissions updated successfully."),
    ("delete_snapshot_permission", "ok", "Snapshot permission deleted successfully."),
    # templates
    ("list_templates", "ok", "Templates retrieved successfully."),
    ("add_template", "ok", "Template added successfully."),
    ("list_templates_and_tags", "ok", "Templates and tags retrieved successfully."),
    ("get_template", "ok", "Template retrieved successfully."),
    ("update_template", "ok", "Template updated successfully."),
    ("update_template", "no change",
     "Incoming data made no changes to template. Is incoming data equal to current data?"),
    ("delete_template", "ok", "Template and associated Template Tags successfully deleted."),
    ("list_template_tags", "ok", "Template tags retrieved successfully."),
    ("add_template_tag", "ok", "Template tag added successfully."),
    ("get_template_tag", "ok", "Template tags retrieved and filtered successfully."),
    ("get_template_tag", "no such tag (404)", "Template tag 'nope' not found for template '{tpl}'."),
    ("get_template_permissions", "ok", "Template permissions retrieved successfully."),
    ("set_template_permission", "ok", "Template permissions updated successfully."),
    ("delete_template_permission", "ok", "Template permission deleted successfully."),
    ("delete_template_permission", "no such permission (404)",
     "Could not find permission for template with username nobody when deleting permission"),
    ("add_template", "description not ASCII (400)", "description field may only contain ASCII characters."),
    # images
    ("get_images", "ok", "Images retrieved successfully."),
    ("add_image", "ok", "Images added successfully."),
    ("add_images", "one added", "Image added successfully."),
    ("add_images", "several added", "Images added successfully."),
    ("add_images", "all duplicates, skip_duplicates", "No images added - all images were duplicates."),
    ("get_image", "ok", "Image retrieved successfully."),
    ("get_image", "unknown image (404)", "Image with id localhost/msg/none not found."),
    ("delete_image", "ok", "Image successfully deleted."),
    ("delete_image", "unknown image (404)", "Image with id localhost/msg/none not found - not deleted."),
    # misc
    ("healthcheck", "ok", "The request was successful."),
    ("error_handler", "502", "Timeout error waiting on Pods service response. The server may be busy or overloaded."),
    ("error_handler", "404", "Invalid request: Invalid request: the requested URL is not an Pods endpoint."),
    ("error_handler", "503", "Unable to parse Pods service response. The server may be misconfigured or overloaded."),
    ("error_handler", "400", "Invalid request: The Pods service does not know how to fulfill the request."),
]
# exec_pod_commands needs a running container (tests/integration/test_exec_upload.py runs it); its texts:
EXEC_MESSAGES = {
    "all ok": "All commands completed.",
    "total timeout": "Execution stopped due to total timeout. Consider increasing the total_timeout parameter.",
    "command timeout": "Execution stopped due to command timeout on latest command. Consider increasing the "
    "command_timeout parameter.",
    "failure": "Execution stopped due to command failure on latest command. Consider setting "
    "fail_on_non_success=False to continue through errors.",
}


def test_exec_messages_are_the_originals() -> None:
    assert EXEC_MESSAGES["total timeout"] == pod_runtime.TOTAL_TIMEOUT
    assert EXEC_MESSAGES["command timeout"] == pod_runtime.COMMAND_TIMEOUT
    assert EXEC_MESSAGES["failure"] == pod_runtime.COMMAND_FAILED


def _msg(r: Any) -> str:
    message = r.json()["message"]
    return " | ".join(message) if isinstance(message, list) else message


def test_messages_are_the_originals(make_server: Any, new_id: Any) -> None:
    srv = make_server()
    srv.allow_image(IMAGE)
    srv.add_user("bob")
    c, bob = srv.client("admin"), srv.client("bob")
    pod, vol, snap, tpl = new_id("pod"), new_id("vol"), new_id("snap"), new_id("tpl")
    got: dict[tuple[str, str], str] = {}

    def call(op: str, case: str, method: str, url: str, status: int = 200, client: Any = c, **kw: Any) -> Any:
        r = client.request(method, url if url.startswith("/error") or url == "/healthcheck" else f"/v3{url}", **kw)
        assert r.status_code == status, (op, case, r.status_code, r.text)
        got[(op, case)] = _msg(r)
        return r

    # pods
    call("create_pod", "ok", "POST", "/pods", json={"pod_id": pod, "image": IMAGE})
    call("list_pods", "ok", "GET", "/pods")
    call("get_pod", "ok", "GET", f"/pods/{pod}")
    call("get_pod", "unknown pod (404)", "GET", f"/pods/{pod}x", 404)
    call("update_pod", "ok", "PUT", f"/pods/{pod}", json={"description": "d"})
    call("update_pod", "no change (200, status error)", "PUT", f"/pods/{pod}", json={"description": "d"})
    call("get_derived_pod", "ok", "GET", f"/pods/{pod}/derived")
    call("get_pod_credentials", "ok", "GET", f"/pods/{pod}/credentials")
    call("get_pod_logs", "ok", "GET", f"/pods/{pod}/logs")
    call("get_pod_permissions", "ok", "GET", f"/pods/{pod}/permissions")
    call("set_pod_permission", "ok", "POST", f"/pods/{pod}/permissions", json={"user": "bob", "level": "READ"})
    call("any pod endpoint", "level too low (403)", "GET", f"/pods/{pod}/stop", 403, client=bob)
    call("set_pod_permission", "no ADMIN left (409)", "POST", f"/pods/{pod}/permissions", 409,
         json={"user": "admin", "level": "USER"})
    call("delete_pod_permission", "ok", "DELETE", f"/pods/{pod}/permissions/bob")
    call("delete_pod_permission", "no such permission (404)", "DELETE", f"/pods/{pod}/permissions/nobody", 404)
    call("start_pod", "not stopped (409)", "GET", f"/pods/{pod}/start", 409)
    call("stop_pod", "ok", "GET", f"/pods/{pod}/stop")
    call("start_pod", "ok", "GET", f"/pods/{pod}/start")
    call("restart_pod", "ok", "GET", f"/pods/{pod}/restart")
    call("create_pod", "description not ASCII (400)", "POST", "/pods", 400,
         json={"pod_id": new_id("pod"), "image": IMAGE, "description": "café"})
    call("create_pod", "description too long (400)", "POST", "/pods", 400,
         json={"pod_id": new_id("pod"), "image": IMAGE, "description": "x" * 300})
    # volumes and snapshots
    call("create_volume", "ok", "POST", "/pods/volumes", json={"volume_id": vol})
    call("list_volumes", "ok", "GET", "/pods/volumes")
    call("get_volume", "ok", "GET", f"/pods/volumes/{vol}")
    call("get_volume", "unknown volume (404)", "GET", "/pods/volumes/novolume", 404)
    call("update_volume", "ok", "PUT", f"/pods/volumes/{vol}", json={"description": "v"})
    call("update_volume", "no change", "PUT", f"/pods/volumes/{vol}", json={"description": "v"})
    call("upload_to_volume", "ok", "POST", f"/pods/volumes/{vol}/upload/a.txt", files={"file": ("a", b"a")})
    call("list_volume_files", "ok", "GET", f"/pods/volumes/{vol}/list")
    call("get_volume_permissions", "ok", "GET", f"/pods/volumes/{vol}/permissions")
    call("set_volume_permission", "ok", "POST", f"/pods/volumes/{vol}/permissions",
         json={"user": "bob", "level": "READ"})
    call("delete_volume_permission", "ok", "DELETE", f"/pods/volumes/{vol}/permissions/bob")
    call("delete_volume_permission", "no such permission (404)", "DELETE",
         f"/pods/volumes/{vol}/permissions/nobody", 404)
    call("create_snapshot", "ok", "POST", "/pods/snapshots",
         json={"snapshot_id": snap, "source_volume_id": vol, "source_volume_path": "/"})
    for _ in range(600):
        if c.get(f"/v3/pods/snapshots/{snap}").json()["result"]["status"] != "CREATING":
            break
        time.sleep(0.05)
    call("list_snapshots", "ok", "GET", "/pods/snapshots")
    call("get_snapshot", "ok", "GET", f"/pods/snapshots/{snap}")
    call("update_snapshot", "ok", "PUT", f"/pods/snapshots/{snap}", json={"description": "s"})
    call("update_snapshot", "no change", "PUT", f"/pods/snapshots/{snap}", json={"description": "s"})
    call("list_snapshot_files", "ok", "GET", f"/pods/snapshots/{snap}/list")
    call("get_snapshot_permissions", "ok", "GET", f"/pods/snapshots/{snap}/permissions")
    call("set_snapshot_permission", "ok", "POST", f"/pods/snapshots/{snap}/permissions",
         json={"user": "bob", "level": "READ"})
    call("delete_snapshot_permission", "ok", "DELETE", f"/pods/snapshots/{snap}/permissions/bob")
    call("delete_snapshot", "ok", "DELETE", f"/pods/snapshots/{snap}")
    call("delete_volume", "ok", "DELETE", f"/pods/volumes/{vol}")
    # templates
    call("add_template", "ok", "POST", "/pods/templates", json={"template_id": tpl})
    call("add_template", "description not ASCII (400)", "POST", "/pods/templates", 400,
         json={"template_id": new_id("tpl"), "description": "naïve"})
    call("list_templates", "ok", "GET", "/pods/templates")
    call("get_template", "ok", "GET", f"/pods/templates/{tpl}")
    call("update_template", "ok", "PUT", f"/pods/templates/{tpl}", json={"description": "t"})
    call("update_template", "no change", "PUT", f"/pods/templates/{tpl}", json={"description": "t"})
    call("add_template_tag", "ok", "POST", f"/pods/templates/{tpl}/tags",
         json={"pod_definition": {"image": IMAGE}, "commit_message": "m", "tag": "v1"})
    call("list_templates_and_tags", "ok", "GET", "/pods/templates/tags")
    call("list_template_tags", "ok", "GET", f"/pods/templates/{tpl}/tags")
    call("get_template_tag", "ok", "GET", f"/pods/templates/{tpl}/tags/v1")
    call("get_template_tag", "no such tag (404)", "GET", f"/pods/templates/{tpl}/tags/nope", 404)
    call("get_template_permissions", "ok", "GET", f"/pods/templates/{tpl}/permissions")
    call("set_template_permission", "ok", "POST", f"/pods/templates/{tpl}/permissions",
         json={"user": "bob", "level": "READ"})
    call("delete_template_permission", "ok", "DELETE", f"/pods/templates/{tpl}/permissions/bob")
    call("delete_template_permission", "no such permission (404)", "DELETE",
         f"/pods/templates/{tpl}/permissions/nobody", 404)
    call("save_pod_as_template_tag", "ok", "POST", f"/pods/{pod}/save_pod_as_template_tag",
         json={"template_id": tpl, "commit_message": "from pod", "tag": "frompod"})
    call("delete_pod", "ok", "DELETE", f"/pods/{pod}")
    call("delete_template", "ok", "DELETE", f"/pods/templates/{tpl}")
    # images
    call("get_images", "ok", "GET", "/pods/images")
    call("add_image", "ok", "POST", "/pods/images", json={"image": "localhost/msg/one"})
    call("add_images", "one added", "POST", "/pods/images/bulk", json=[{"image": "localhost/msg/two"}])
    call("add_images", "several added", "POST", "/pods/images/bulk",
         json=[{"image": "localhost/msg/three"}, {"image": "localhost/msg/four"}])
    call("add_images", "all duplicates, skip_duplicates", "POST", "/pods/images/bulk",
         params={"skip_duplicates": "true"}, json=[{"image": "localhost/msg/two"}])
    call("get_image", "ok", "GET", "/pods/images/localhost/msg/one")
    call("get_image", "unknown image (404)", "GET", "/pods/images/localhost/msg/none", 404)
    call("delete_image", "ok", "DELETE", "/pods/images/localhost/msg/one")
    call("delete_image", "unknown image (404)", "DELETE", "/pods/images/localhost/msg/none", 404)
    # misc
    health = call("healthcheck", "ok", "GET", "/healthcheck")
    assert health.json()["result"] == "I promise I'm healthy."
    for code in (502, 404, 503, 400):
        call("error_handler", str(code), "GET", f"/error-handler/{code}", code)

    wrong = []
    for op, case, original in MESSAGES:
        original = original.format(pod=pod, tpl=tpl)
        message = got.get((op, case))
        if message is None:
            wrong.append(f"{op} / {case}: not exercised")
        elif not (message == original or message.startswith(original) or f": {original}" in message):
            wrong.append(f"{op} / {case}: {message!r} does not carry the original {original!r}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("field", ["description"])
def test_validation_texts_keep_the_field_path(make_server: Any, new_id: Any, field: str) -> None:
    """The original's text follows our ``<field path>: `` prefix, so both kinds of clients find what they
    look for (the original's own test: ``'description field may only contain ASCII characters' in msg``)."""
    srv = make_server()
    srv.allow_image(IMAGE)
    r = srv.client("admin").post("/v3/pods", json={"pod_id": new_id("pod"), "image": IMAGE, field: "cafè"})
    assert r.status_code == 400
    assert r.json()["message"] == [f"{field}: {field} field may only contain ASCII characters."]
