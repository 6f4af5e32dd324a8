"""The page at ``/``: a position form and a gallery of stamps from every covering image, in time order.

Plain HTML and a little JavaScript, no build step. The script asks
``/api/cutout/sky?...&RESPONSEFORMAT=json`` (the PNG stamps come inline as data URLs) and draws one
``figure.stamp`` per image with its data ID, date, band and links: the stamp as FITS (SODA sync)
and the whole image (``/api/datasets/ID``). With ``--token-file`` the page takes the token in a
field and sends it as a bearer token.
"""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>objbutler cutouts</title>
<style>
 body { font-family: sans-serif; margin: 1.5em; background: #fafafa; }
 form label { margin-right: 1em; }
 input { width: 8em; }
 #gallery { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 1em; }
 figure.stamp { margin: 0; padding: 6px; background: #fff; border: 1px solid #ccc; font-size: 12px; width: 160px; }
 figure.stamp img { width: 150px; height: 150px; image-rendering: pixelated; background: #000; }
 #status.error { color: #b00; }
</style>
</head>
<body>
<h1>objbutler cutouts</h1>
<form id="search">
 <label>RA (deg) <input id="ra" name="ra" value="150.1" required></label>
 <label>Dec (deg) <input id="dec" name="dec" value="2.2" required></label>
 <label>Size (pixels) <input id="size" name="size" value="51" required></label>
 <label>Type <input id="type" name="type" value="calexp" required></label>
 <label>Token <input id="token" name="token" type="password" placeholder="if required"></label>
 <button id="go" type="submit">Show stamps</button>
</form>
<p id="status"></p>
<div id="gallery"></div>
<script>
const form = document.getElementById("search");
const gallery = document.getElementById("gallery");
const statusLine = document.getElementById("status");

function text(tag, value) {
  const node = document.createElement(tag);
  node.textContent = value;
  return node;
}

function link(href, label) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = label;
  return a;
}

function mjdToDate(mjd) {
  if (mjd === null || mjd === undefined) return "no date";
  return new Date((mjd - 40587) * 86400000).toISOString().replace("T", " ").slice(0, 19);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const ra = document.getElementById("ra").value.trim();
  const dec = document.getElementById("dec").value.trim();
  const size = document.getElementById("size").value.trim();
  const type = document.getElementById("type").value.trim();
  const token = document.getElementById("token").value.trim();
  const query = new URLSearchParams({POS: ra + " " + dec, SIZE: size, TYPE: type, RESPONSEFORMAT: "json"});
  gallery.replaceChildren();
  statusLine.className = "";
  statusLine.textContent = "searching...";
  const headers = token ? {Authorization: "Bearer " + token} : {};
  const response = await fetch("api/cutout/sky?" + query.toString(), {headers});
  const body = await response.text();
  if (!response.ok) {
    statusLine.className = "error";
    statusLine.textContent = body;
    return;
  }
  const answer = JSON.parse(body);
  for (const stamp of answer.stamps) {
    const figure = document.createElement("figure");
    figure.className = "stamp";
    const img = document.createElement("img");
    img.src = "data:image/png;base64," + stamp.png;
    img.alt = JSON.stringify(stamp.data_id);
    figure.appendChild(img);
    const caption = document.createElement("figcaption");
    caption.appendChild(text("div", JSON.stringify(stamp.data_id)));
    caption.appendChild(text("div", mjdToDate(stamp.mjd) + (stamp.band ? " " + stamp.band : "")));
    caption.appendChild(link(stamp.fits_url, "stamp FITS"));
    caption.appendChild(text("span", " | "));
    caption.appendChild(link(stamp.dataset_url, "image"));
    figure.appendChild(caption);
    gallery.appendChild(figure);
  }
  statusLine.textContent = answer.stamps.length + " stamps at " + ra + ", " + dec;
});
</script>
</body>
</html>
"""
