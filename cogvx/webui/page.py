"""The Gradio page: a form built from the Cog server's schema, a Generate button, the video,
the output file and the prediction's logs. Every check and every default is the server's."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr

from cogvx.webui.client import CogClient, ServerError, show_output
from cogvx.webui.form import Field, FormError, layout, to_request

# System fonts only: the page makes no request outside the machine (GPU boxes are often offline).
THEME = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
CSS = "#logs textarea { font-family: ui-monospace, monospace; font-size: 12px; }"


def _widget(field: Field) -> Any:
    """The Gradio component for one input (elem_id `input-<name>`)."""
    common: dict[str, Any] = {"label": field.label, "elem_id": f"input-{field.name}"}
    if field.description and field.kind != "file":  # file components take no `info`
        common["info"] = field.description
    if field.kind == "text":
        lines = 3 if field.name == "prompt" else 1
        return gr.Textbox(value=field.default or "", lines=lines, **common)
    if field.kind == "boolean":
        return gr.Checkbox(value=bool(field.default), **common)
    if field.kind == "choice":
        return gr.Dropdown(choices=list(field.choices), value=field.default, **common)
    if field.kind == "file":
        if field.description:
            gr.Markdown(field.description, elem_classes=["file-info"])
        if field.name == "image":
            return gr.Image(type="filepath", sources=["upload"], **common)
        if field.name == "video":
            return gr.Video(sources=["upload"], **common)
        return gr.File(type="filepath", **common)
    if field.default is None:  # a blank seed means "random"; gr.Number would show and send 0
        return gr.Textbox(value="", placeholder="blank: random", **common)
    if field.slider:
        span = (field.maximum or 0) - (field.minimum or 0)
        step = 1 if field.kind == "integer" else (0.01 if span <= 1 else 0.1)
        return gr.Slider(field.minimum, field.maximum, value=field.default, step=step, **common)
    precision = 0 if field.kind == "integer" else None
    return gr.Number(value=field.default, precision=precision, **common)


class Page:
    """The page's state: the server it talks to, its fields, where outputs are written."""

    def __init__(
        self,
        client: CogClient,
        fields: list[Field],
        out_dir: Path | None = None,
        file_output: bool = True,
    ):
        self.client = client
        self.fields = fields
        self.file_output = file_output  # a video runner (else text: captioning)
        self.out_dir = Path(out_dir or tempfile.mkdtemp(prefix="cogvx-web-"))
        self.count = 0

    def generate(self, *values: Any) -> tuple[Any, Any, str, str, str]:
        """One click: (video, file, text output, status line, logs)."""
        try:
            names = [f.name for f in self.fields]
            request = to_request(self.fields, dict(zip(names, values, strict=True)))
        except FormError as exc:
            return None, None, "", f"**Not sent:** {exc}", ""
        start = time.monotonic()
        try:
            result = self.client.predict(request)
        except ServerError as exc:
            return None, None, "", f"**Server error:** {exc}", ""
        seconds = time.monotonic() - start
        if not result.ok:
            return None, None, "", f"**{result.status}:** {result.error}", result.logs
        self.count += 1
        video, path, text = show_output(result.output, self.out_dir / f"output-{self.count}")
        done = f"**Done** in {seconds:.1f} s"
        return _str(video), _str(path), text, done, result.logs


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)  # Gradio's file data takes str paths


def build_page(page: Page, title: str) -> gr.Blocks:
    """The Blocks app for `page` (launch it with `launch(demo)`)."""
    main, advanced = layout(page.fields)
    widgets: dict[str, Any] = {}
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}\nServer: `{page.client.url}`")
        with gr.Row():
            with gr.Column(scale=1):
                for field in main:
                    widgets[field.name] = _widget(field)
                if advanced:
                    with gr.Accordion("Advanced", open=False):
                        for field in advanced:
                            widgets[field.name] = _widget(field)
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=1):
                status = gr.Markdown("", elem_id="status")
                files = page.file_output
                video = gr.Video(
                    label="Video", elem_id="output-video", interactive=False, visible=files
                )
                file = gr.File(
                    label="Output file", elem_id="output-file", interactive=False, visible=files
                )
                text = gr.Textbox(
                    label="Output", elem_id="output-text", interactive=False, visible=not files
                )
                logs = gr.Textbox(label="Logs", elem_id="logs", lines=12, interactive=False)
        button.click(
            page.generate,
            inputs=[widgets[f.name] for f in page.fields],
            outputs=[video, file, text, status, logs],
            concurrency_limit=1,  # the Cog server runs one prediction at a time
        )
    return demo


def launch(demo: gr.Blocks, host: str, port: int, out_dir: Path) -> None:
    """Serve the page (blocking) with no share link, telemetry, SSR or external fonts."""
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        ssr_mode=False,
        mcp_server=False,
        allowed_paths=[str(out_dir)],
        theme=THEME,
        css=CSS,
        footer_links=[],
    )
