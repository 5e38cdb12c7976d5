// The frame both pages share: a header with the page's tagline and a link to the other page, an
// error banner, and the controls form beside the view. Styled by styles/page.css.

import { h } from "./dom";

export interface PageParts {
  /** the words after "convlens" in the header */
  tagline: string;
  /** the header link to the other page */
  nav: HTMLElement;
  /** the banner for a failed load, hidden until then */
  banner: HTMLElement;
  /** the controls form's sections, in order */
  controls: HTMLElement[];
  /** called when the form is submitted (the page does not reload) */
  submit: () => void;
  /** what goes in the view column, beside the form */
  view: HTMLElement[];
}

export function pageFrame(parts: PageParts): HTMLElement {
  const form = h("form", { class: "controls", novalidate: true }, ...parts.controls);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    parts.submit();
  });
  return h(
    "div",
    { class: "page" },
    h(
      "header",
      { class: "top" },
      h("h1", {}, "convlens"),
      h("span", { class: "tagline" }, parts.tagline),
      parts.nav,
    ),
    parts.banner,
    h("main", { class: "layout" }, form, h("section", { class: "view" }, ...parts.view)),
  );
}
