// What every page edge-classify --serve serves (the live view, /review) needs: its requests carry the page's own
// token. The server puts this text inside each page, in place of the tag that names this file
// (edge.sinks.web.page_html). No closing script tag may appear in it, not even in a comment.
"use strict";
var token = new URLSearchParams(location.search).get("token");
function url(path, query) {  // path?query, with the token when the page was opened with one
  var params = new URLSearchParams(query || "");
  if (token) params.set("token", token);
  var text = params.toString();
  return path + (text ? "?" + text : "");
}
