// Uploading attachments. A file always goes over HTTP, whatever carries the events (sockets do not
// carry files), in three steps: create the attachment, send the file where the server says (our
// own upload view, or an S3 presigned POST), then have the server check it. The outbox decides
// when; this only moves the bytes.

import { HttpError } from "./http.js";
import { _ } from "./i18n.js";

// The page renders the attachment's complete URL for this id; the real one goes in its place.
const NIL_ID = "00000000-0000-0000-0000-000000000000";

export class Uploads {
  // attachmentsUrl: the room's /api/rooms/<slug>/attachments; completeUrl: for the id NIL_ID.
  constructor(api, { attachmentsUrl, completeUrl }) {
    this.api = api;
    this.attachmentsUrl = attachmentsUrl;
    this.completeUrl = completeUrl;
    this.inflight = new Map(); // File -> its XMLHttpRequest while it uploads
  }

  // Resolves with the checked attachment (what a message refers to), rejects with an HttpError.
  async upload(file, info, onProgress) {
    const created = await this.api.send("POST", this.attachmentsUrl, {
      name: info.name,
      size: info.size,
      content_type: info.content_type || "application/octet-stream",
    });
    await this.sendFile(created.upload, file, onProgress);
    const completeUrl = this.completeUrl.replace(NIL_ID, encodeURIComponent(created.attachment.id));
    const done = await this.api.send("POST", completeUrl, {});
    return done.attachment;
  }

  abort(file) {
    const xhr = this.inflight.get(file);
    if (xhr) xhr.abort();
  }

  sendFile(upload, file, onProgress) {
    return new Promise((resolve, reject) => {
      const url = new URL(upload.url, location.href);
      // Every field of the presigned form first: S3 ignores fields after the file.
      const form = new FormData();
      for (const [name, value] of Object.entries(upload.fields || {})) form.append(name, value);
      form.append("file", file, file.name);
      // XMLHttpRequest rather than fetch: fetch reports no upload progress.
      const xhr = new XMLHttpRequest();
      this.inflight.set(file, xhr);
      xhr.addEventListener("loadend", () => this.inflight.delete(file));
      xhr.open("POST", url.href);
      if (url.origin === location.origin) {
        // Our own upload view: the session cookie goes by default, and it needs the CSRF token.
        xhr.setRequestHeader("X-CSRFToken", this.api.csrf());
        xhr.setRequestHeader("Accept", "application/json");
      } else {
        // The bucket: the presigned fields are the credentials; our cookie and token stay here.
        xhr.withCredentials = false;
      }
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable && e.total) onProgress(e.loaded / e.total);
      });
      xhr.addEventListener("load", () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          resolve();
          return;
        }
        let data = null;
        try {
          data = JSON.parse(xhr.responseText);
        } catch (err) {
          data = null; // S3 answers XML; the status says enough
        }
        reject(new HttpError(xhr.status, data));
      });
      const network = () => reject(new HttpError(0, { error: "network", detail: _("The upload was interrupted.") }));
      xhr.addEventListener("error", network);
      xhr.addEventListener("abort", network);
      xhr.send(form);
    });
  }
}
