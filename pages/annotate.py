"""Annotate: draw a defect by hand; the mask is saved as MVTec ground truth for pixel-level metrics.

The canvas shows the image with its long side between 512 and 640 px (small parts scaled up in crisp blocks) and
the mask is saved at the image's own size (``core.data.annotate``). The canvas is keyed on the image's content, never
on the name it is saved as, so renaming keeps the drawing.
"""

import hashlib
from pathlib import Path

import numpy as np
import streamlit as st
from PIL import Image
from streamlit_drawable_canvas import st_canvas

from core.access import Permission
from core.data.annotate import canvas_background, canvas_size, mask_from_canvas, save_annotation
from core.data.imageio import SUPPORTED_SUFFIXES
from ui import auth, cache
from ui.frame import selection
from ui.inspect_view import ImageLoadError, decode_upload

sel = selection()
st.title("Annotate defects")
if sel.category is None:
    st.info("Pick a category in the sidebar.")
    st.stop()
data = cache.category(sel.data_root, sel.category)
st.caption("Paint over the defect. Saving writes the image to `test/<defect>/` and the mask to "
           "`ground_truth/<defect>/<name>_mask.png`; the image then counts in pixel-level metrics on the next evaluation.")

upload = st.file_uploader("Image to annotate", type=[s.lstrip(".") for s in SUPPORTED_SUFFIXES])
unmasked = {f"{s.defect}/{s.path.name}": str(s.path) for s in data.test if s.label == 1 and s.mask_path is None}
picked = st.selectbox("…or pick a defect test image without a mask", ["—"] + list(unmasked)) if unmasked else "—"
if not unmasked:
    st.caption("Every defect test image of this category already has a mask: upload an image to draw one.")
image = None
stem = "annotated"
try:
    if upload is not None:
        image, stem = decode_upload(upload.name, upload.getvalue()), Path(upload.name).stem
    elif picked != "—":
        image, stem = cache.image_from_path(unmasked[picked]), Path(unmasked[picked]).stem
except ImageLoadError as exc:
    st.error(f"Cannot annotate {exc.source}: {exc.reason}")
if image is None:
    st.info("Upload an image or pick a defect test image above to draw its mask." if unmasked else
            "Upload an image above to draw its mask.")
    st.stop()

h, w = image.shape[:2]
ch, cw = canvas_size(h, w)
image_id = hashlib.sha1(f"{image.shape}".encode() + image.tobytes()).hexdigest()[:16]  # a new image: a new canvas
c1, c2 = st.columns([3, 1])
with c2:
    tool = st.radio("Tool", ["freedraw", "rect", "circle", "polygon"], horizontal=False)
    stroke = st.slider("Brush size", 1, 40, 12)
    defect = st.text_input("Defect type", value=next(iter(data.defect_types), "defect"))
    name = st.text_input("Save as", value="".join(ch_ if ch_.isalnum() or ch_ in "_-" else "_" for ch_ in stem) or "annotated")
with c1:
    background = Image.fromarray(canvas_background(image, (ch, cw)))
    result = st_canvas(fill_color="rgba(255, 0, 0, 0.45)", stroke_width=stroke, stroke_color="rgba(255, 0, 0, 0.9)",
                       background_image=background, height=ch, width=cw, drawing_mode=tool, return_image_data=True,
                       key=f"canvas-{image_id}")
    st.caption(f"{w} x {h} px image shown at {cw / w:.2g}x; the mask is saved at {w} x {h} px.")

drawing = result.image_data if result is not None else None
painted = drawing is not None and (np.asarray(drawing)[:, :, 3] > 0).any()
if painted:
    mask = mask_from_canvas(np.asarray(drawing).astype(np.uint8), (h, w))
    st.caption(f"Mask covers {mask.mean():.2%} of the image.")
if st.button("Save as ground truth", type="primary", disabled=not painted or not auth.can(Permission.ANNOTATE),
             help=auth.only_for(Permission.ANNOTATE)):
    auth.require(Permission.ANNOTATE)
    try:
        img_path, mask_path = save_annotation(sel.data_root, sel.category, defect.strip(), name.strip(), image, mask)
    except (ValueError, OSError) as exc:
        st.error(str(exc))
    else:
        cache.category_data.clear()
        st.success(f"Saved {img_path} and {mask_path}. Re-evaluate on the Thresholds page to include it.")
